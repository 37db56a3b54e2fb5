//! GitHub App authentication: an App JWT (RS256, signed with the App's
//! private key) buys an installation access token for a repository, kept
//! until shortly before it expires.
//!
//! The installation is looked up per repository (`GET
//! /repos/{owner}/{repo}/installation`, cached with the token), so every
//! caller — the intake, the reporter, the commands — authenticates the same
//! way whatever event it started from.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::client::ClientError;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// A GitHub App: its id and private key, and the installation tokens it
/// obtained.
pub struct GithubApp {
    app_id: u64,
    key: EncodingKey,
    /// (API base URL, `owner/name`) → (token, expiry in seconds since the epoch).
    tokens: Mutex<HashMap<(String, String), (String, u64)>>,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl GithubApp {
    /// The App `app_id` with its private key in PEM (PKCS#1 or PKCS#8, as
    /// GitHub hands it out).
    ///
    /// # Errors
    /// A message naming the key when it is not an RSA private key in PEM
    /// (the key itself is never part of it).
    pub fn new(app_id: u64, pem: &[u8]) -> Result<GithubApp, String> {
        let key = EncodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("the GitHub App private key is not an RSA key in PEM: {e}"))?;
        Ok(GithubApp {
            app_id,
            key,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// [`GithubApp::new`] with the key read from `path`.
    ///
    /// # Errors
    /// The file, when it cannot be read, or as [`GithubApp::new`].
    pub fn from_file(app_id: u64, path: &Path) -> Result<GithubApp, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
        GithubApp::new(app_id, &pem)
    }

    /// The App's id.
    pub fn id(&self) -> u64 {
        self.app_id
    }

    /// A JWT for the App itself, valid for 9 minutes (GitHub allows 10;
    /// issued a minute in the past against clock drift).
    ///
    /// # Errors
    /// [`ClientError::Refused`] when it cannot be signed.
    pub fn jwt(&self) -> Result<String, ClientError> {
        let now = now_s();
        let claims = Claims {
            iat: now.saturating_sub(60),
            exp: now + 540,
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| ClientError::Refused(format!("cannot sign the GitHub App JWT: {e}")))
    }

    /// The cached installation token for `repository` at `api_url`, unless
    /// it expires within five minutes.
    pub async fn cached(&self, api_url: &str, repository: &str) -> Option<String> {
        let tokens = self.tokens.lock().await;
        tokens
            .get(&(api_url.to_string(), repository.to_string()))
            .filter(|(_, exp)| now_s() + RENEW_BEFORE.as_secs() < *exp)
            .map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `repository` until `expires_at` (RFC 3339, as
    /// GitHub answers it; unreadable: an hour, GitHub's lifetime).
    pub async fn keep(&self, api_url: &str, repository: &str, token: String, expires_at: &str) {
        let exp = humantime::parse_rfc3339(expires_at)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now_s() + 3600, |d| d.as_secs());
        self.tokens
            .lock()
            .await
            .insert((api_url.to_string(), repository.to_string()), (token, exp));
    }
}

/// GitHub's answer to `POST /app/installations/{id}/access_tokens`.
#[derive(Debug, Deserialize)]
pub struct InstallationToken {
    /// The token.
    pub token: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
}

/// GitHub's answer to `GET /repos/{owner}/{repo}/installation`.
#[derive(Debug, Deserialize)]
pub struct Installation {
    /// The installation id.
    pub id: u64,
}

/// `owner/name` of a repository URL (`https://github.com/owner/name.git`).
pub fn repository_of(url: &str) -> Option<String> {
    let path = url.split_once("://")?.1.split_once('/')?.1;
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let mut parts = path.rsplitn(3, '/');
    let name = parts.next().filter(|s| !s.is_empty())?;
    let owner = parts.next().filter(|s| !s.is_empty())?;
    Some(format!("{owner}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_read_from_their_urls() {
        assert_eq!(
            repository_of("https://github.com/Codertocat/Hello-World.git").as_deref(),
            Some("Codertocat/Hello-World")
        );
        assert_eq!(
            repository_of("https://ghe.example.com/org/app/").as_deref(),
            Some("org/app")
        );
        assert_eq!(repository_of("https://github.com/"), None);
    }

    #[test]
    fn a_bad_key_is_refused_without_echoing_it() {
        let err = GithubApp::new(1, b"-----BEGIN RSA PRIVATE KEY-----\nhunter2\n").unwrap_err();
        assert!(err.contains("not an RSA key"), "{err}");
        assert!(!err.contains("hunter2"));
    }
}

//! Optional bearer-token authentication of the API services.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The token every API call must carry as `authorization: Bearer <token>`.
///
/// Compared in constant time. Health and reflection stay open (probes and
/// tooling need them, and they reveal no runs).
#[derive(Clone)]
pub struct AuthToken(Arc<[u8]>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// A token; surrounding whitespace (a trailing newline in a file) is dropped.
    ///
    /// # Errors
    /// A message when the token is empty or is not valid in an HTTP header.
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the auth token is empty".into());
        }
        if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("the auth token must be printable ASCII without spaces".into());
        }
        Ok(AuthToken(token.as_bytes().into()))
    }

    /// True when `header` is `Bearer <this token>`.
    pub fn accepts(&self, header: &[u8]) -> bool {
        let Some(rest) = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
        else {
            return false;
        };
        // Lengths differ: still compare something of equal length, so the
        // time taken does not tell how much of the token matched.
        if rest.len() != self.0.len() {
            let _ = self.0.ct_eq(&self.0);
            return false;
        }
        rest.ct_eq(&self.0).into()
    }

    /// Checks a request's `authorization` metadata.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when it is missing or wrong.
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        match request.metadata().get("authorization") {
            Some(v) if self.accepts(v.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

/// The token from `file` (when given) or else `env_value`; `None` when
/// neither is set (authentication off: the only way to serve openly).
///
/// A configured `file` must exist: a missing file is an error, never a
/// silent "no auth" — a server that was meant to require a token must not
/// start open because a Secret was not mounted. For the same reason a set
/// but blank `env_value` is an error, not "no auth".
///
/// # Errors
/// A message when the file is missing or unreadable, when `env_value` is
/// blank, or when the token is malformed.
pub fn load_token(
    file: Option<&Path>,
    env_value: Option<&str>,
) -> Result<Option<AuthToken>, String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth token file {}: {e}", path.display()))?;
        return AuthToken::new(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()));
    }
    match env_value {
        Some(v) if v.trim().is_empty() => Err(
            "STAGETIME_AUTH_TOKEN is set but blank: refusing to serve without authentication \
             (set a token, or unset the variable to serve openly)"
                .into(),
        ),
        Some(v) => AuthToken::new(v).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        let t = AuthToken::new("s3cret\n").unwrap();
        assert!(t.accepts(b"Bearer s3cret"));
        assert!(!t.accepts(b"Bearer s3cre"));
        assert!(!t.accepts(b"Bearer s3cret2"));
        assert!(!t.accepts(b"s3cret"));
        assert!(!t.accepts(b"Basic s3cret"));
        assert!(AuthToken::new("  ").is_err());
        assert!(AuthToken::new("a b").is_err());
    }

    #[test]
    fn a_configured_token_file_must_exist_and_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("stagetime-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let err = load_token(Some(&missing), Some("from-env")).unwrap_err();
        assert!(err.contains("missing"), "the error names the file: {err}");
        let t = load_token(None, Some("from-env")).unwrap().unwrap();
        assert!(t.accepts(b"Bearer from-env"));
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(load_token(Some(&empty), Some("from-env")).is_err());
        let good = dir.join("good");
        std::fs::write(&good, "file-token\n").unwrap();
        let t = load_token(Some(&good), Some("from-env")).unwrap().unwrap();
        assert!(t.accepts(b"Bearer file-token"));
        assert!(
            load_token(Some(&dir), None).is_err(),
            "a directory is unreadable"
        );
        // Issue 11: a blank token fails closed; only no token at all is open.
        for blank in ["   ", "", "\n"] {
            let err = load_token(None, Some(blank)).unwrap_err();
            assert!(err.contains("blank"), "{err}");
        }
        assert!(load_token(None, None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

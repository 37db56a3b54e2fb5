//! Checking that a delivery comes from the forge: HMAC-SHA256 signatures
//! (GitHub, Gitea/Forgejo) and GitLab's shared token, in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a delivery is refused before anything else is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No signature (or token) header: answered 401.
    Missing,
    /// A signature that does not match the body and secret: answered 403.
    Mismatch,
}

/// The `sha256=<hex>` value GitHub sends in `X-Hub-Signature-256`.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex_hmac(secret, body))
}

/// The hex HMAC-SHA256 of `body` with `secret` (Gitea's `X-Gitea-Signature`).
pub fn hex_hmac(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    to_hex(&mac.finalize().into_bytes())
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>`.
///
/// # Errors
/// [`SignatureError::Missing`] without a header, [`SignatureError::Mismatch`]
/// for anything but the right signature.
pub fn verify_github(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Mismatch)?;
    verify_hex(secret, body, hex)
}

/// Checks Gitea's (Forgejo's) `X-Gitea-Signature` / `X-Forgejo-Signature`:
/// the bare hex HMAC-SHA256 of the body.
///
/// # Errors
/// As [`verify_github`].
pub fn verify_gitea(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    verify_hex(secret, body, header.trim())
}

/// Checks GitLab's `X-Gitlab-Token` (the secret itself), comparing digests
/// so that neither content nor length leaks through timing.
///
/// # Errors
/// As [`verify_github`].
pub fn verify_gitlab(secret: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let given = Sha256::digest(header.as_bytes());
    let expected = Sha256::digest(secret);
    if bool::from(given.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn verify_hex(secret: &[u8], body: &[u8], hex: &str) -> Result<(), SignatureError> {
    let given = from_hex(hex).ok_or(SignatureError::Mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in GitHub's "Validating webhook deliveries" documentation.
    const DOC_SECRET: &[u8] = b"It's a Secret to Everybody";
    const DOC_BODY: &[u8] = b"Hello, World!";
    const DOC_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_example_verifies() {
        assert_eq!(github_signature(DOC_SECRET, DOC_BODY), DOC_SIGNATURE);
        assert_eq!(
            verify_github(DOC_SECRET, DOC_BODY, Some(DOC_SIGNATURE)),
            Ok(())
        );
    }

    #[test]
    fn github_refuses_missing_wrong_and_malformed() {
        assert_eq!(
            verify_github(DOC_SECRET, DOC_BODY, None),
            Err(SignatureError::Missing)
        );
        let wrong = github_signature(b"other", DOC_BODY);
        assert_eq!(
            verify_github(DOC_SECRET, DOC_BODY, Some(&wrong)),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "sha256=", "sha256=zz", "sha1=abcd", &DOC_SIGNATURE[7..]] {
            assert_eq!(
                verify_github(DOC_SECRET, DOC_BODY, Some(bad)),
                Err(SignatureError::Mismatch),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_github(DOC_SECRET, b"Hello, World?", Some(DOC_SIGNATURE)),
            Err(SignatureError::Mismatch),
            "another body"
        );
    }

    #[test]
    fn gitea_signature_is_bare_hex() {
        let sig = hex_hmac(DOC_SECRET, DOC_BODY);
        assert_eq!(format!("sha256={sig}"), DOC_SIGNATURE);
        assert_eq!(verify_gitea(DOC_SECRET, DOC_BODY, Some(&sig)), Ok(()));
        assert_eq!(
            verify_gitea(DOC_SECRET, DOC_BODY, Some(DOC_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_gitea(DOC_SECRET, DOC_BODY, None),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn gitlab_token_must_equal_the_secret() {
        assert_eq!(verify_gitlab(b"s3cret", Some("s3cret")), Ok(()));
        assert_eq!(
            verify_gitlab(b"s3cret", Some("s3cre")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_gitlab(b"s3cret", Some("")),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_gitlab(b"s3cret", None), Err(SignatureError::Missing));
    }
}

//! Configuration of a [`crate::RedisStore`].

use std::time::Duration;

use stagetime_core::store::{DEFAULT_RECLAIM_AFTER, DEFAULT_RETENTION};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "stagetime:";
/// Default consumer group of the work stream.
pub const DEFAULT_GROUP: &str = "engines";
/// Default approximate cap of the work stream (a safety net; see
/// [`RedisConfig::stream_max_len`]).
pub const DEFAULT_STREAM_MAX_LEN: u64 = 10_000_000;

/// How to reach Redis and how to use it.
///
/// ```
/// use std::time::Duration;
/// use stagetime_redis::RedisConfig;
///
/// let c = RedisConfig::new("rediss://:secret@redis.example:6380/2")
///     .with_prefix("ci")
///     .with_reclaim_after(Duration::from_secs(60))
///     .with_retention(Duration::from_secs(3 * 24 * 3600));
/// assert_eq!(c.prefix, "ci:");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Connection URL: `redis://[user][:password@]host[:port][/db]`, or
    /// `rediss://` for TLS (append `#insecure` to skip certificate checks,
    /// for tests only).
    pub url: String,
    /// Prefix of every key; ends with `:` (added when missing). Stores with
    /// different prefixes share a server without seeing each other.
    pub prefix: String,
    /// The consumer group of the work stream (one per prefix).
    pub group: String,
    /// A claimed item not acknowledged within this time is handed to another
    /// consumer (measured with the `now_ms` passed to `claim`, and by the
    /// server's clock as a backstop).
    pub reclaim_after: Duration,
    /// Finished runs are kept this long, then expire.
    pub retention: Duration,
    /// Approximate cap of the work stream (`XADD MAXLEN ~`); 0 disables it.
    /// Acknowledged entries are trimmed anyway (`XTRIM MINID`): this cap is
    /// only a safety net against unbounded growth when nobody consumes, and
    /// must stay well above the largest backlog you expect, because entries
    /// trimmed by it are lost.
    pub stream_max_len: u64,
    /// Page size of `list_runs` when the filter gives none.
    pub page_size: usize,
    /// How long a normal command may take before it fails as unavailable.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// For `rediss://`: trust this CA certificate (PEM) instead of the
    /// system's roots (a private CA, or a test server).
    pub tls_root_cert: Option<Vec<u8>>,
}

impl RedisConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            group: DEFAULT_GROUP.to_string(),
            reclaim_after: DEFAULT_RECLAIM_AFTER,
            retention: DEFAULT_RETENTION,
            stream_max_len: DEFAULT_STREAM_MAX_LEN,
            page_size: 100,
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            tls_root_cert: None,
        }
    }

    /// Sets the key prefix (a trailing `:` is added when missing).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = normalise_prefix(prefix.into());
        self
    }

    /// Sets the consumer group name.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets the reclaim time of unacknowledged claims.
    pub fn with_reclaim_after(mut self, d: Duration) -> Self {
        self.reclaim_after = d;
        self
    }

    /// Sets how long finished runs are kept.
    pub fn with_retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Sets the approximate cap of the work stream (0: none).
    pub fn with_stream_max_len(mut self, n: u64) -> Self {
        self.stream_max_len = n;
        self
    }

    /// Sets the default page size of listings.
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Sets the response timeout of normal commands.
    pub fn with_response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Trusts this CA certificate (PEM) for `rediss://` instead of the system's roots.
    pub fn with_tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

pub(crate) fn normalise_prefix(mut p: String) -> String {
    if !p.is_empty() && !p.ends_with(':') {
        p.push(':');
    }
    p
}

impl std::fmt::Debug for RedisConfig {
    /// Leaves the password out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .field("reclaim_after", &self.reclaim_after)
            .field("retention", &self.retention)
            .field("stream_max_len", &self.stream_max_len)
            .field("page_size", &self.page_size)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|c| c.len()),
            )
            .finish()
    }
}

/// The URL with its password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(redact("rediss://u:pw@h/0"), "rediss://u:***@h/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let c = RedisConfig::new("redis://:topsecret@h/0");
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn prefixes_end_with_a_colon() {
        assert_eq!(
            RedisConfig::new("redis://h").with_prefix("ci").prefix,
            "ci:"
        );
        assert_eq!(
            RedisConfig::new("redis://h").with_prefix("ci:").prefix,
            "ci:"
        );
        assert_eq!(RedisConfig::new("redis://h").prefix, DEFAULT_PREFIX);
    }
}

//! [`TektonConfig`]: where and how PipelineRuns are created.

use std::time::Duration;

/// The earlier system's fixed `fsGroup` of every TaskRun pod.
pub const DEFAULT_FS_GROUP: i64 = 65532;

/// The earlier system's fixed `spec.timeouts.pipeline`, used when a task has no timeout.
pub const DEFAULT_PIPELINE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What [`crate::TektonBackend`]'s cancel writes into `spec.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelMode {
    /// `Cancelled`: stop everything now, finally tasks included.
    #[default]
    Cancelled,
    /// `CancelledRunFinally`: cancel running tasks, then run the Pipeline's finally tasks.
    CancelledRunFinally,
}

impl CancelMode {
    /// The value of `spec.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelMode::Cancelled => "Cancelled",
            CancelMode::CancelledRunFinally => "CancelledRunFinally",
        }
    }
}

/// A client-side token bucket on API calls: `per_second` sustained, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained calls per second (> 0).
    pub per_second: f64,
    /// Calls allowed at once after a quiet period (≥ 1).
    pub burst: u32,
}

impl Default for RateLimit {
    /// 20 calls per second, bursts of 40 (client-go's QPS 5 / burst 10, four times over).
    fn default() -> Self {
        RateLimit {
            per_second: 20.0,
            burst: 40,
        }
    }
}

/// How often and how patiently retryable API errors (429, 5xx, connection
/// errors) are retried inside the backend before it reports `Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the second try; doubles after each, capped at `max_delay`.
    pub base_delay: Duration,
    /// Cap of the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 tries, 200 ms doubling to at most 3 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// The delay before try `n + 1` after `n` failed tries (`n ≥ 1`).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Where and how [`crate::TektonBackend`] creates PipelineRuns.
#[derive(Debug, Clone, PartialEq)]
pub struct TektonConfig {
    /// Namespace of the PipelineRuns.
    pub namespace: String,
    /// `spec.taskRunTemplate.podTemplate.securityContext.fsGroup` (`None`: not set).
    pub fs_group: Option<i64>,
    /// `spec.timeouts.pipeline` when the task has no timeout (`None`: Tekton's default).
    pub default_timeout: Option<Duration>,
    /// `spec.taskRunTemplate.serviceAccountName` (`None`: Tekton's default).
    pub service_account: Option<String>,
    /// Prefix of label and annotation keys (`stagetime` gives `stagetime/run`).
    pub label_prefix: String,
    /// What cancel writes into `spec.status`.
    pub cancel_mode: CancelMode,
    /// Client-side rate limit of API calls (`None`: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Retries of retryable API errors.
    pub retry: RetryPolicy,
}

impl Default for TektonConfig {
    fn default() -> Self {
        TektonConfig {
            namespace: "default".to_string(),
            fs_group: Some(DEFAULT_FS_GROUP),
            default_timeout: Some(DEFAULT_PIPELINE_TIMEOUT),
            service_account: None,
            label_prefix: "stagetime".to_string(),
            cancel_mode: CancelMode::Cancelled,
            rate_limit: Some(RateLimit::default()),
            retry: RetryPolicy::default(),
        }
    }
}

impl TektonConfig {
    /// The default configuration for `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        TektonConfig {
            namespace: namespace.into(),
            ..TektonConfig::default()
        }
    }

    /// The label (or annotation) key `<prefix>/<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.label_prefix)
    }

    /// The label selector of every PipelineRun stagetime manages.
    pub fn managed_selector(&self) -> String {
        format!(
            "{}={}",
            self.key(crate::render::LABEL_MANAGED_BY),
            crate::render::MANAGED_BY_VALUE
        )
    }

    /// The label selector of the PipelineRuns of one run.
    pub fn run_selector(&self, run: &str) -> String {
        format!(
            "{},{}={}",
            self.managed_selector(),
            self.key(crate::render::LABEL_RUN),
            crate::naming::sanitize_label_value(run)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_earlier_system() {
        let c = TektonConfig::new("ci");
        assert_eq!(c.namespace, "ci");
        assert_eq!(c.fs_group, Some(65532));
        assert_eq!(c.default_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.key("run"), "stagetime/run");
        assert_eq!(c.managed_selector(), "stagetime/managed-by=stagetime");
        assert_eq!(
            c.run_selector("r-1"),
            "stagetime/managed-by=stagetime,stagetime/run=r-1"
        );
        assert_eq!(
            CancelMode::CancelledRunFinally.as_str(),
            "CancelledRunFinally"
        );
    }

    #[test]
    fn retry_delays_double_and_cap() {
        let r = RetryPolicy::default();
        assert_eq!(r.delay(1), Duration::from_millis(200));
        assert_eq!(r.delay(2), Duration::from_millis(400));
        assert_eq!(r.delay(5), Duration::from_secs(3));
        assert_eq!(r.delay(40), Duration::from_secs(3));
    }
}

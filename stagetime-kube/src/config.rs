//! [`TektonConfig`]: where and how PipelineRuns are created.

use std::collections::BTreeMap;
use std::time::Duration;

use stagetime_core::FieldErrors;

use crate::types::PodTemplate;

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
    /// `StoppedRunFinally`: start no new tasks, let the running ones finish,
    /// then run the Pipeline's finally tasks.
    StoppedRunFinally,
}

impl CancelMode {
    /// The value of `spec.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelMode::Cancelled => "Cancelled",
            CancelMode::CancelledRunFinally => "CancelledRunFinally",
            CancelMode::StoppedRunFinally => "StoppedRunFinally",
        }
    }
}

impl std::fmt::Display for CancelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CancelMode {
    type Err = String;

    /// Tekton's spelling (`CancelledRunFinally`) or kebab case
    /// (`cancelled-run-finally`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s
            .trim()
            .replace(['-', '_'], "")
            .to_ascii_lowercase()
            .as_str()
        {
            "cancelled" => Ok(CancelMode::Cancelled),
            "cancelledrunfinally" => Ok(CancelMode::CancelledRunFinally),
            "stoppedrunfinally" => Ok(CancelMode::StoppedRunFinally),
            _ => Err(format!(
                "cancel mode {s:?} is not one of Cancelled, CancelledRunFinally, StoppedRunFinally"
            )),
        }
    }
}

/// Reads the repository → namespace mapping of
/// [`TektonConfig::repo_namespaces`]: `repo=namespace` entries separated by
/// commas, spaces or new lines (`web=team-web,api=team-api`).
///
/// # Errors
/// Every bad entry, by position: no `=`, an empty repository, a namespace
/// that is not a DNS-1123 label, a repository given twice.
pub fn parse_repo_namespaces(text: &str) -> Result<BTreeMap<String, String>, FieldErrors> {
    let mut map = BTreeMap::new();
    let mut errors = FieldErrors::default();
    let entries = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let field = format!("repo_namespaces[{i}]");
        let Some((repo, ns)) = entry.split_once('=') else {
            errors.push(field, format!("{entry:?} is not `repo=namespace`"));
            continue;
        };
        if repo.is_empty() {
            errors.push(field, format!("{entry:?} names no repository"));
        } else if !stagetime_core::plan::is_dns1123_label(ns) {
            errors.push(
                field,
                format!("{ns:?} is not a namespace name (a DNS-1123 label: lowercase letters, digits and '-', at most 63)"),
            );
        } else if map.insert(repo.to_string(), ns.to_string()).is_some() {
            errors.push(field, format!("repository {repo:?} is mapped twice"));
        }
    }
    if errors.is_empty() {
        Ok(map)
    } else {
        Err(errors)
    }
}

/// Reads a pod template for `spec.taskRunTemplate.podTemplate` from YAML or
/// JSON (what the worker's `--pod-template` takes), strictly: only
/// [`PodTemplate::FIELDS`] at the top, and no key anywhere below that the
/// Kubernetes types do not know (a typo such as `runAsUsr` is an error, not
/// silently dropped). An empty document is an empty template.
///
/// ```
/// use stagetime_kube::config::parse_pod_template;
/// let t = parse_pod_template("nodeSelector: {pool: ci}\nsecurityContext: {fsGroup: 1000}").unwrap();
/// assert_eq!(t.node_selector["pool"], "ci");
/// let err = parse_pod_template("securityContext: {runAsUsr: 1}").unwrap_err();
/// assert!(err.to_string().contains("securityContext.runAsUsr"), "{err}");
/// ```
///
/// # Errors
/// Every bad field (`podTemplate.<path>`) and why.
pub fn parse_pod_template(text: &str) -> Result<PodTemplate, FieldErrors> {
    let invalid = |path: String, message: String| {
        let mut e = FieldErrors::default();
        e.push(path, message);
        e
    };
    let value: serde_json::Value = yaml_serde::from_str(text)
        .map_err(|e| invalid("podTemplate".into(), format!("not YAML or JSON: {e}")))?;
    let fields = match value {
        serde_json::Value::Null => return Ok(PodTemplate::default()),
        serde_json::Value::Object(m) => m,
        other => {
            return Err(invalid(
                "podTemplate".into(),
                format!("must be a mapping, not {other}"),
            ));
        }
    };
    let mut errors = FieldErrors::default();
    let mut template = serde_json::Map::new();
    for (key, value) in fields {
        let path = format!("podTemplate.{key}");
        if !PodTemplate::FIELDS.contains(&key.as_str()) {
            errors.push(
                path,
                format!(
                    "unknown field, expected one of {}",
                    PodTemplate::FIELDS.join(", ")
                ),
            );
            continue;
        }
        // Each field on its own, so that a type error names its field.
        let single =
            serde_json::Value::Object([(key.clone(), value.clone())].into_iter().collect());
        match serde_json::from_value::<PodTemplate>(single) {
            Err(e) => errors.push(path, e.to_string()),
            Ok(parsed) => {
                let back = serde_json::to_value(&parsed).unwrap_or_default();
                let mut dropped = Vec::new();
                unknown_keys(&value, &back[key.as_str()], &path, &mut dropped);
                for p in dropped {
                    errors.push(p, "unknown field");
                }
                template.insert(key, value);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_json::from_value(serde_json::Value::Object(template))
        .map_err(|e| invalid("podTemplate".into(), e.to_string()))
}

/// Pushes the path of every key of `input` (not null) that `parsed` (the
/// same value read into typed structs and written back) lost.
fn unknown_keys(
    input: &serde_json::Value,
    parsed: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (input, parsed) {
        (Value::Object(i), Value::Object(p)) => {
            for (k, v) in i {
                let sub = format!("{path}.{k}");
                match p.get(k) {
                    None if !v.is_null() => out.push(sub),
                    None => {}
                    Some(pv) => unknown_keys(v, pv, &sub, out),
                }
            }
        }
        (Value::Array(i), Value::Array(p)) => {
            for (n, (iv, pv)) in i.iter().zip(p).enumerate() {
                unknown_keys(iv, pv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
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
    /// Namespace of the PipelineRuns (of repositories not in
    /// [`TektonConfig::repo_namespaces`]).
    pub namespace: String,
    /// The namespace of the PipelineRuns of each listed repository (by the
    /// run's `repo`); the other repositories' go to `namespace`.
    pub repo_namespaces: BTreeMap<String, String>,
    /// `spec.taskRunTemplate.podTemplate.securityContext.fsGroup` (`None`: not
    /// set) when [`TektonConfig::pod_template`] has no `securityContext`.
    pub fs_group: Option<i64>,
    /// `spec.taskRunTemplate.podTemplate` (`None`: only the `fsGroup` above).
    /// Its `securityContext`, when set, replaces the default one whole.
    pub pod_template: Option<PodTemplate>,
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
            repo_namespaces: BTreeMap::new(),
            fs_group: Some(DEFAULT_FS_GROUP),
            pod_template: None,
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

    /// The namespace of the PipelineRuns of runs of repository `repo`.
    pub fn namespace_for(&self, repo: &str) -> &str {
        self.repo_namespaces
            .get(repo)
            .map_or(self.namespace.as_str(), String::as_str)
    }

    /// Every namespace PipelineRuns may be in: `namespace` first, then the
    /// other namespaces of `repo_namespaces`, each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut all = vec![self.namespace.as_str()];
        for ns in self.repo_namespaces.values() {
            if !all.contains(&ns.as_str()) {
                all.push(ns);
            }
        }
        all
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
    fn repositories_map_to_namespaces_and_bad_entries_are_named() {
        let mut c = TektonConfig::new("ci");
        c.repo_namespaces = parse_repo_namespaces("web=team-web, api=team-api\nold=ci").unwrap();
        assert_eq!(c.namespace_for("web"), "team-web");
        assert_eq!(c.namespace_for("unmapped"), "ci");
        assert_eq!(c.namespaces(), ["ci", "team-api", "team-web"]);
        assert!(parse_repo_namespaces("").unwrap().is_empty());
        let e = parse_repo_namespaces("web,=ns,api=Team_API,web=a,web=b")
            .unwrap_err()
            .to_string();
        for needle in [
            "repo_namespaces[0]",
            "\"web\" is not `repo=namespace`",
            "repo_namespaces[1]",
            "names no repository",
            "\"Team_API\" is not a namespace name",
            "repo_namespaces[4]",
            "repository \"web\" is mapped twice",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in {e}");
        }
    }

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

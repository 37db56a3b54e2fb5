//! The revision-run document: what users write (native YAML/JSON).
//!
//! The types mirror the native format key for key (snake_case, unknown keys
//! rejected). Values that need checking — names, durations, stage numbers —
//! are kept as written and checked by [`crate::plan::Plan::build`], so that
//! *every* problem in a document is reported at once, each with its path.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{ParseLimits, Shape};

/// One revision run: for one commit of one repository, the tasks to run.
///
/// ```
/// let spec: stagetime_core::RevisionRunSpec = yaml_serde::from_str(r#"
/// repo: demo
/// commit: 4f1c2e9a77
/// tasks:
///   - { name: lint, command: "true" }
///   - { name: test, stage: 1, command: "true" }
/// "#).unwrap();
/// assert_eq!(spec.tasks.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionRunSpec {
    /// Explicit run id; when absent one is derived from repo, commit and content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Repository name (required).
    #[serde(default)]
    pub repo: String,
    /// Repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// Branch the commit was pushed to (used for concurrency groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Commit id (required; short ids are fine).
    #[serde(default)]
    pub commit: String,
    /// Who pushed the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// When the commit was pushed (RFC 3339, kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<String>,
    /// Free-form key/value metadata about the run, handed to backends as is
    /// (the Tekton backend copies it onto every PipelineRun as annotations;
    /// the operator records its RevisionRun here as the PipelineRuns' owner).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Run-wide options.
    #[serde(default, skip_serializing_if = "RunOptions::is_default")]
    pub options: RunOptions,
    /// The tasks (pipeline runs), grouped into stages.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// Tasks that run once every other task is terminal, whatever happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<TaskSpec>,
}

/// Run-wide options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Cancel running tasks as soon as a failure that is not allowed happens.
    #[serde(default)]
    pub fail_fast: bool,
    /// At most this many tasks of the run at once (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Run timeout (e.g. `1h`), counted from the start of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Cap of the doubling retry delay (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_max: Option<String>,
    /// How many attempts of one task lost with their executor (a worker
    /// killed mid-attempt) are retried as infrastructure failures, apart
    /// from the task's own `retries` (default 2, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_retries: Option<u32>,
    /// Runs of the same group are related (e.g. `repo/branch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
    /// A newer run of the same group cancels older ones still running.
    #[serde(default)]
    pub cancel_in_progress: bool,
}

/// Building a run in code: `RevisionRunSpec::new("repo", "commit").task(...)`.
impl RevisionRunSpec {
    /// A run of `commit` of `repo` with no tasks yet.
    pub fn new(repo: impl Into<String>, commit: impl Into<String>) -> Self {
        RevisionRunSpec {
            repo: repo.into(),
            commit: commit.into(),
            ..RevisionRunSpec::default()
        }
    }

    /// Adds a task.
    pub fn task(mut self, task: TaskSpec) -> Self {
        self.tasks.push(task);
        self
    }

    /// Adds a finally task.
    pub fn finally_task(mut self, task: TaskSpec) -> Self {
        self.finally.push(task);
        self
    }
}

impl RunOptions {
    fn is_default(&self) -> bool {
        self == &RunOptions::default()
    }
}

/// One task: a pipeline run (Tekton) and/or a command (local backend).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique name, a DNS-1123 label (lowercase letters, digits, `-`).
    #[serde(default)]
    pub name: String,
    /// Stage number (non-negative whole number, default 0). Not allowed on finally tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// A failure (or timeout) of this task does not fail the run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub can_fail: bool,
    /// Explicit dependencies; when present they replace the stage barrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    /// Further attempts after a failure or timeout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Delay before the second attempt; doubles after each attempt, capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<String>,
    /// Timeout of one attempt, counted from its launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Shell command for the local backend (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Tekton pipeline for the Tekton backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,
    /// An opaque payload for a custom (embedded) backend, handed to it as
    /// written in [`crate::LaunchRequest::task`]; stagetime checks nothing in
    /// it. Only backends declaring [`crate::backend::Capabilities::custom`]
    /// run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
    /// Which forge events select the task, for runs started by a webhook
    /// (see docs/git.md): the webhook intake keeps a task only when its
    /// `when` matches the event, and drops tasks that need a dropped one.
    /// Runs started otherwise (`run`, `submit`) run every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<TaskWhen>,
}

/// A task's `when`: every list given must match (event kind, branch or PR
/// target branch, tag, a changed file); an absent list matches anything.
/// Globs use `*`, `**`, `?` and `[...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskWhen {
    /// `push`, `tag` or `pull_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Branch globs (for pull requests: the target branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<String>>,
    /// Tag globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Globs of changed files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

/// The event kinds a task's `when.events` may name.
pub const WHEN_EVENTS: [&str; 3] = ["push", "tag", "pull_request"];

/// Building a task in code: `TaskSpec::new("test").stage(1).command("make test")`.
impl TaskSpec {
    /// A task called `name` in stage 0 with nothing to run yet.
    pub fn new(name: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            ..TaskSpec::default()
        }
    }

    /// Puts the task in stage `stage`.
    pub fn stage(mut self, stage: u32) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Makes the task wait for exactly these tasks instead of the stage barrier.
    pub fn needs<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.needs = Some(tasks.into_iter().map(Into::into).collect());
        self
    }

    /// Lets the task fail without failing the run.
    pub fn can_fail(mut self) -> Self {
        self.can_fail = true;
        self
    }

    /// Allows `retries` further attempts after a failure or timeout.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the timeout of one attempt, e.g. `"5m"` (checked by `Plan::build`).
    pub fn timeout(mut self, timeout: impl Into<String>) -> Self {
        self.timeout = Some(timeout.into());
        self
    }

    /// Sets the shell command (local backend).
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }

    /// Sets the opaque payload for a custom backend.
    pub fn custom(mut self, payload: serde_json::Value) -> Self {
        self.custom = Some(payload);
        self
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The Tekton side of a task.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Name of an in-cluster `Pipeline` (exclusive with `resolver`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<String>,
    /// Resolver name, e.g. `git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// Resolver params, e.g. `url`, `revision`, `pathInRepo`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolver_params: BTreeMap<String, String>,
    /// String params of the PipelineRun.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Array params of the PipelineRun.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub list_params: BTreeMap<String, Vec<String>>,
    /// Workspaces bound to the PipelineRun.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspaces: Vec<WorkspaceSpec>,
}

/// One workspace binding: exactly one of the sources must be given.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Workspace name as the Pipeline declares it.
    #[serde(default)]
    pub name: String,
    /// Name of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Name of an existing PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    /// Name of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// A volume claim created per PipelineRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_template: Option<VolumeClaimTemplateSpec>,
}

/// A per-PipelineRun volume claim.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeClaimTemplateSpec {
    /// Storage class (absent: the cluster default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Access mode (default `ReadWriteOnce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<String>,
    /// Requested size, e.g. `1Gi`.
    #[serde(default)]
    pub storage: String,
}

/// A stage number as written. Validation accepts non-negative whole numbers only;
/// the earlier system sent stages as protobuf doubles, so any number is read.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stage(f64);

impl Stage {
    /// The stage as written.
    pub fn as_f64(self) -> f64 {
        self.0
    }

    /// The stage when it is a non-negative whole number that fits a `u32`.
    pub fn whole(self) -> Option<u32> {
        let v = self.0;
        (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX))
            .then_some(v as u32)
    }
}

impl From<u32> for Stage {
    fn from(n: u32) -> Self {
        Stage(f64::from(n))
    }
}

impl From<f64> for Stage {
    fn from(n: f64) -> Self {
        Stage(n)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.whole() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.whole() {
            Some(n) => s.serialize_u32(n),
            None => s.serialize_f64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StageVisitor;
        impl Visitor<'_> for StageVisitor {
            type Value = Stage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a stage number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Stage, E> {
                Ok(Stage(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Stage, E> {
                Ok(Stage(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Stage, E> {
                Ok(Stage(v))
            }
            // The protobuf JSON mapping writes doubles as strings too
            // ("1", "NaN", "Infinity"); validation then says what is wrong.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Stage, E> {
                match v.trim() {
                    "NaN" => Ok(Stage(f64::NAN)),
                    "Infinity" => Ok(Stage(f64::INFINITY)),
                    "-Infinity" => Ok(Stage(f64::NEG_INFINITY)),
                    t => t.parse::<f64>().map(Stage).map_err(|_| {
                        E::custom(format_args!(
                            "stage {} must be a whole number",
                            crate::limits::quoted(v)
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(StageVisitor)
    }
}

/// The format a document was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    /// The native format (YAML or JSON).
    Native,
    /// The earlier system's protobuf-JSON `CreateRevisionRunRequest`.
    Legacy,
}

/// Keys only the earlier system's file has at the top level.
const LEGACY_KEYS: &[&str] = &[
    "repo_name",
    "repoName",
    "commit_id",
    "commitId",
    "pipelineruns",
    "repoUrl",
    "pushedAt",
];

/// Reads a native (YAML or JSON) or legacy (protobuf JSON) document.
///
/// The one reader of documents: the CLI, the gRPC API and anything that
/// fetches pipeline files use it. The format is detected by the top-level
/// keys; a leading UTF-8 byte order mark is ignored. `what` names the input
/// in error messages (usually the file name). The document is first walked
/// without being built, within the default [`ParseLimits`] (size, nesting,
/// values with aliases expanded), so a hostile document costs memory in
/// proportion to its size, never more.
///
/// # Errors
/// [`crate::Error::Parse`] naming the key and position for syntax errors,
/// unknown keys and wrong types, or the limit a document exceeds;
/// [`crate::Error::Invalid`] listing every malformed compact field of a
/// legacy file.
pub fn parse_document(what: &str, text: &str) -> crate::Result<(RevisionRunSpec, DocumentFormat)> {
    parse_document_within(what, text, &ParseLimits::default())
}

/// [`parse_document`] within other `limits` (e.g. a server's smaller
/// document size).
///
/// # Errors
/// As [`parse_document`].
pub fn parse_document_within(
    what: &str,
    text: &str,
    limits: &ParseLimits,
) -> crate::Result<(RevisionRunSpec, DocumentFormat)> {
    let parse_err = |e: &dyn fmt::Display| crate::Error::Parse {
        what: what.to_string(),
        message: e.to_string(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let keys = match crate::limits::scan(text, limits).map_err(|e| parse_err(&e))? {
        Shape::Mapping(keys) => keys,
        Shape::Null => return Err(parse_err(&"the document is empty")),
        Shape::Other => return Err(parse_err(&"expected a mapping at the top level")),
    };
    let is_legacy = keys.iter().any(|k| LEGACY_KEYS.contains(&k.as_str()));
    if is_legacy {
        let legacy: crate::legacy::LegacyRevisionRun =
            yaml_serde::from_str(text).map_err(|e| parse_err(&e))?;
        Ok((legacy.into_spec()?, DocumentFormat::Legacy))
    } else {
        let spec: RevisionRunSpec = yaml_serde::from_str(text).map_err(|e| parse_err(&e))?;
        Ok((spec, DocumentFormat::Native))
    }
}

//! The `Backend` trait: what runs a task attempt (a child process, a Tekton
//! PipelineRun) and reports how it ended.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::plan::{Plan, TaskIndex};
use crate::scheduler::AttemptOutcome;
use crate::spec::TaskSpec;
use crate::store::RunId;

/// The deterministic identity of one task attempt. Launching is idempotent on
/// it: the same key launched twice runs once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LaunchKey {
    /// The run.
    pub run: RunId,
    /// The task's name.
    pub task: String,
    /// The attempt, 1 for the first.
    pub attempt: u32,
}

impl std::fmt::Display for LaunchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.run, self.task, self.attempt)
    }
}

/// The run a task belongs to, as backends label and parameterise it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Repository name.
    pub repo: String,
    /// Repository URL.
    pub repo_url: Option<String>,
    /// Branch.
    pub branch: Option<String>,
    /// Commit id.
    pub commit: String,
    /// Author.
    pub author: Option<String>,
    /// Push time as written.
    pub pushed_at: Option<String>,
    /// The run's `annotations` (free-form metadata for backends).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// When the run was created in its store (ms since the epoch; 0 when
    /// unknown). A run id used again after its record was gone (a new
    /// process with a memory store, a purge) gets a new creation time, which
    /// tells backends that keep outcomes on disk a new run from a resumed one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything a backend needs to launch one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    /// Identity (idempotency key).
    pub key: LaunchKey,
    /// The run.
    pub run: RunMeta,
    /// The task as written.
    pub task: TaskSpec,
    /// Stage number (`None` for finally tasks).
    pub stage: Option<u32>,
    /// True for finally tasks.
    pub is_finally: bool,
    /// Timeout of this attempt, for backends that enforce it themselves.
    pub timeout: Option<Duration>,
}

impl LaunchRequest {
    /// The request for `task`, attempt `attempt`, of a run
    /// ([`RunMeta::created_ms`] left 0: the engine sets it from the record).
    pub fn for_task(run: &RunId, plan: &Plan, task: TaskIndex, attempt: u32) -> Self {
        let t = plan.task(task);
        let s = &plan.spec;
        LaunchRequest {
            key: LaunchKey {
                run: run.clone(),
                task: t.spec.name.clone(),
                attempt,
            },
            run: RunMeta {
                repo: s.repo.clone(),
                repo_url: s.repo_url.clone(),
                branch: s.branch.clone(),
                commit: s.commit.clone(),
                author: s.author.clone(),
                pushed_at: s.pushed_at.clone(),
                annotations: s.annotations.clone(),
                created_ms: 0,
            },
            task: t.spec.clone(),
            stage: t.stage,
            is_finally: t.is_finally,
            timeout: t.timeout,
        }
    }
}

/// What a backend says after a launch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launched {
    /// Where to look for the attempt: a PipelineRun name, a log file.
    pub handle: String,
    /// False when the attempt existed already and was adopted.
    pub created: bool,
}

/// An attempt's end, as observed by the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Which attempt.
    pub key: LaunchKey,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// What a backend can run: which of a task's targets (`command`,
/// `pipeline`, `custom`) it understands. [`crate::Engine::submit`] refuses a
/// run with a task that has none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Runs a task's `command`.
    pub commands: bool,
    /// Runs a task's `pipeline`.
    pub pipelines: bool,
    /// Runs a task's opaque `custom` payload (see [`TaskSpec::custom`]).
    pub custom: bool,
}

impl Capabilities {
    /// Only a task's `command` (a shell command).
    pub const COMMANDS: Capabilities = Capabilities {
        commands: true,
        pipelines: false,
        custom: false,
    };

    /// Only a task's `custom` payload: the usual choice of an embedded backend.
    pub const CUSTOM: Capabilities = Capabilities {
        commands: false,
        pipelines: false,
        custom: true,
    };

    /// True when this backend can run something of `task`.
    pub fn can_run(&self, task: &TaskSpec) -> bool {
        (self.commands && task.command.is_some())
            || (self.pipelines && task.pipeline.is_some())
            || (self.custom && task.custom.is_some())
    }

    /// Checks that every task of `plan` has something this backend can run.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming each task that cannot run here.
    pub fn check(&self, plan: &Plan, backend: &str) -> Result<()> {
        let mut errors = crate::FieldErrors::default();
        let wanted: Vec<&str> = [
            (self.commands, "`command`"),
            (self.pipelines, "`pipeline`"),
            (self.custom, "`custom`"),
        ]
        .into_iter()
        .filter_map(|(yes, what)| yes.then_some(what))
        .collect();
        let what = if wanted.is_empty() {
            "target".to_string()
        } else {
            wanted.join(" or ")
        };
        for (i, t) in plan.tasks.iter().enumerate() {
            if !self.can_run(&t.spec) {
                let (section, pos) = if t.is_finally {
                    ("finally", i - plan.main_count as usize)
                } else {
                    ("tasks", i)
                };
                errors.push(
                    format!("{section}[{pos}]"),
                    format!(
                        "task {:?} has no {what}, which the {backend} backend needs",
                        t.spec.name
                    ),
                );
            }
        }
        errors.into_result(())
    }
}

/// Finished work older than `ttl`, or beyond the newest `keep_last` per
/// repository, is deleted by [`Backend::housekeeping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Housekeeping {
    /// Delete finished attempts older than this.
    pub ttl: Duration,
    /// Keep at least the newest this many finished attempts per repository.
    pub keep_last: usize,
    /// The current time (ms since the epoch).
    pub now_ms: u64,
}

/// When and how an engine has its backend do housekeeping
/// ([`EngineConfig::housekeeping`](crate::engine::EngineConfig::housekeeping)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HousekeepingPolicy {
    /// How often a pass runs.
    pub every: Duration,
    /// Finished work older than this may be deleted ([`Housekeeping::ttl`]).
    pub ttl: Duration,
    /// The newest this many finished attempts per repository are always kept
    /// ([`Housekeeping::keep_last`]).
    pub keep_last: usize,
}

impl HousekeepingPolicy {
    /// The pass of this policy at `now_ms` (ms since the epoch).
    pub fn at(&self, now_ms: u64) -> Housekeeping {
        Housekeeping {
            ttl: self.ttl,
            keep_last: self.keep_last,
            now_ms,
        }
    }
}

/// What one housekeeping pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HousekeepingReport {
    /// Handles (names, paths) of what was deleted.
    pub deleted: Vec<String>,
}

/// What runs task attempts.
///
/// Implementations: [`crate::local::LocalBackend`] (child processes),
/// `stagetime_kube::TektonBackend` (PipelineRuns), [`crate::FnBackend`] (an
/// `async fn` per attempt, for embedding) and, for tests and benchmarks,
/// `testkit::InstantBackend`. Every implementation must pass the backend
/// conformance suite (`backend_conformance_tests!`, feature
/// `test-util`).
///
/// **Most embedders need not implement this trait**: wrap an `async fn
/// (LaunchRequest, CancellationToken) -> AttemptOutcome` in
/// [`crate::FnBackend`], which provides every contract below.
///
/// To implement it, put `#[stagetime_core::async_trait]` on the `impl` block
/// (the trait is written with [`async_trait`](crate::async_trait), re-exported
/// by this crate; without it the compiler reports a lifetime mismatch,
/// E0195). The signatures this page shows are the macro's expansion: write
/// them as plain `async fn`. `launch`, `cancel` and `observe` are required;
/// `reconcile` and `housekeeping` have defaults that are right for backends
/// whose attempts live only inside this process.
///
/// Contracts the engine relies on (the conformance suite checks each):
/// - every launched attempt's end is published to every [`observe`]
///   stream exactly once or more (repeats are ignored), **including a
///   cancelled attempt's** ([`AttemptOutcome::Cancelled`]) — an attempt
///   whose end is never observed keeps its run running until its timeout;
/// - launching a key that exists starts nothing;
/// - cancel of an unknown or finished attempt succeeds.
///
/// A backend that can tell that an attempt was lost with its executor (the
/// process supervising it died, its cluster object was deleted from under
/// it) reports [`AttemptOutcome::Lost`]: the scheduler retries it as an
/// infrastructure failure, apart from the task's own retries. Report it only
/// when the attempt's end is really unknown — an attempt that is known to
/// have succeeded must be reported as succeeded.
///
/// [`observe`]: Backend::observe
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for messages (`local`, `tekton`).
    fn name(&self) -> &str;

    /// What this backend can run.
    fn capabilities(&self) -> Capabilities;

    /// Launches one attempt.
    ///
    /// Idempotent on `request.key`: launching a key that exists (running or
    /// finished, launched by this or an earlier process) starts nothing and
    /// returns its handle with `created: false`.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] (retry later); [`crate::Error::Invalid`]
    /// or [`crate::Error::Unsupported`] when this task cannot run here (the
    /// attempt fails); [`crate::Error::AlreadyExists`] when a foreign object
    /// holds the name; [`crate::Error::Forbidden`].
    async fn launch(&self, request: LaunchRequest) -> Result<Launched>;

    /// Cancels one attempt; its end must then be observed (as
    /// [`AttemptOutcome::Cancelled`], or however it really ended if it
    /// finished first). Idempotent: cancelling an unknown or finished attempt
    /// succeeds and does nothing.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`]; [`crate::Error::Forbidden`].
    async fn cancel(&self, key: &LaunchKey) -> Result<()>;

    /// A stream of attempt ends observed from now on. May be called more than
    /// once; every stream sees every observation. An attempt's end may be
    /// observed more than once (the engine ignores repeats). [`Observers`]
    /// implements this fan-out.
    fn observe(&self) -> BoxStream<'static, Observation>;

    /// The ends of a run's attempts that already happened, e.g. after a
    /// restart: the engine calls it for every running run when it starts.
    /// Idempotent and read-only.
    ///
    /// Returning nothing is allowed: it is the default, and it is right for a
    /// backend whose attempts do not outlive its process (with an in-memory
    /// store, runs do not either). A backend whose attempts do outlive it
    /// (processes, cluster objects) must report them, or runs restarted with
    /// a durable store wait for those attempts until their timeouts.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`]; [`crate::Error::Forbidden`].
    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let _ = run;
        Ok(Vec::new())
    }

    /// Deletes finished work per `policy`. Idempotent. The default deletes
    /// nothing (right for backends that keep nothing).
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`]; [`crate::Error::Forbidden`].
    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        let _ = policy;
        Ok(HousekeepingReport::default())
    }
}

/// A backend that is shared behind an `Arc`.
pub type SharedBackend = std::sync::Arc<dyn Backend>;

#[allow(dead_code)]
fn _assert_object_safe(_: &dyn Backend) {}

/// The fan-out behind [`Backend::observe`]: every subscriber gets every
/// observation; subscribers that went away are dropped. Keep it inside the
/// backend's own lock.
#[derive(Debug, Default)]
pub struct Observers(Vec<tokio::sync::mpsc::UnboundedSender<Observation>>);

impl Observers {
    /// A new stream of observations published from now on.
    pub fn subscribe(&mut self) -> BoxStream<'static, Observation> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.0.push(tx);
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|o| (o, rx))
        }))
    }

    /// Sends `observation` to every live subscriber.
    pub fn publish(&mut self, observation: Observation) {
        self.0.retain(|tx| tx.send(observation.clone()).is_ok());
    }
}

//! The `Store` trait: where runs live, and the work queue that lets any
//! number of engines share them.
//!
//! A run is one [`RunRecord`] (spec, scheduler state, outbox) changed only by
//! [`Store::commit`], a compare-and-set on its version that also enqueues the
//! work the transition causes and acknowledges the work it consumed — one
//! atomic step, so a crash between steps loses nothing and repeats nothing.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::backend::LaunchKey;
use crate::error::{Error, Result};
use crate::scheduler::{AttemptOutcome, Command, Event, RunOutcome, RunPhase, SchedulerState};
use crate::spec::RevisionRunSpec;

/// Version of the stored record layout; a record of another version is
/// reported as [`Error::Corrupt`] rather than misread.
pub const RECORD_FORMAT: u32 = 1;

/// A run's id: 1–63 of `a-z0-9-.`, starting and ending alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Checks and wraps an id.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field `id` when the id is malformed.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let b = id.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric();
        if ok {
            Ok(RunId(id))
        } else {
            let mut errors = crate::FieldErrors::default();
            errors.push(
                "id",
                format!("{} is not a valid run id: use 1-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit", crate::limits::quoted(&id)),
            );
            Err(Error::Invalid(errors))
        }
    }

    /// The id derived from a spec's repo, commit and content: submitting the
    /// same document twice yields the same id.
    pub fn derive(spec: &RevisionRunSpec) -> RunId {
        let canonical = serde_json::to_vec(spec).unwrap_or_default();
        RunId::readable(&[(&spec.repo, 24), (&spec.commit, 12)], &canonical, 5)
    }

    /// A deterministic id people can read: each of `words` slugged (lowercase
    /// letters and digits, other characters as `-`) and cut to its length,
    /// then the first `hash_bytes` bytes of SHA-256 of `key` in hex, joined
    /// by `-`; empty parts are left out. With `hash_bytes` ≤ 8 and words
    /// within 63 characters together, the id is valid.
    pub fn readable(words: &[(&str, usize)], key: &[u8], hash_bytes: usize) -> RunId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key);
        let hash: String = digest
            .iter()
            .take(hash_bytes)
            .map(|b| format!("{b:02x}"))
            .collect();
        let slug = |s: &str, max: usize| -> String {
            let s: String = s
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            s.trim_matches('-')
                .chars()
                .take(max)
                .collect::<String>()
                .trim_matches('-')
                .to_string()
        };
        let parts: Vec<String> = words
            .iter()
            .map(|(w, max)| slug(w, *max))
            .chain(std::iter::once(hash))
            .filter(|p| !p.is_empty())
            .collect();
        RunId(parts.join("-"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run is, as listed and filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not started.
    Queued,
    /// Started, not over.
    Running,
    /// Over: every task succeeded or was allowed to fail.
    Succeeded,
    /// Over: something failed.
    Failed,
    /// Over: cancelled.
    Cancelled,
}

impl RunState {
    /// The state for a scheduler state.
    pub fn of(s: &SchedulerState) -> RunState {
        match (s.phase(), s.outcome()) {
            (RunPhase::Pending, _) => RunState::Queued,
            (RunPhase::Done, Some(RunOutcome::Succeeded)) => RunState::Succeeded,
            (RunPhase::Done, Some(RunOutcome::Cancelled)) => RunState::Cancelled,
            (RunPhase::Done, _) => RunState::Failed,
            _ => RunState::Running,
        }
    }

    /// True for Succeeded, Failed and Cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
    }

    /// The lowercase name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Queued,
            RunState::Running,
            RunState::Succeeded,
            RunState::Failed,
            RunState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Wall-clock facts about one task, kept by the engine (the scheduler reads no clock).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTiming {
    /// When the first attempt was launched (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_launch_ms: Option<u64>,
    /// When the current or last attempt was launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_ms: Option<u64>,
    /// When the task became terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The backend's handle of the last attempt (PipelineRun name, log path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Every attempt launched, oldest first, across reruns: when it ran, how
    /// it ended and why, and its handle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptTiming>,
}

/// One attempt of a task, as the engine recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptTiming {
    /// The attempt's number (1 for the first).
    pub number: u32,
    /// The run's round it belongs to: 0, then one more per rerun.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// When it was launched (ms since the epoch).
    pub launch_ms: u64,
    /// When it ended; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The task's status right after the attempt ended: `backoff` means it
    /// failed and another attempt follows; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::scheduler::TaskStatus>,
    /// Why it ended so (failure, timeout or cancel reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The backend's handle (PipelineRun name, log path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

impl AttemptTiming {
    /// From launch to end, or to `now_ms` while it runs.
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.finished_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.launch_ms)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Layout version ([`RECORD_FORMAT`]).
    pub format: u32,
    /// The run's id.
    pub id: RunId,
    /// Incremented by every commit (optimistic concurrency).
    pub version: u64,
    /// The document the run was submitted with.
    pub spec: RevisionRunSpec,
    /// The scheduler's state.
    pub scheduler: SchedulerState,
    /// Derived from the scheduler state; indexed for listing.
    pub state: RunState,
    /// When the run was submitted (ms since the epoch).
    pub created_ms: u64,
    /// When it last changed.
    pub updated_ms: u64,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Per-task wall-clock facts, indexed like the plan.
    pub timings: Vec<TaskTiming>,
    /// Launch and cancel commands committed but not yet carried out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Command>,
}

/// One task of a run record, as [`RunRecord::tasks`] yields it: the task as
/// written, the scheduler's state and the engine's times, joined.
#[derive(Debug, Clone, Copy)]
pub struct RecordedTask<'a> {
    /// The task as written.
    pub spec: &'a crate::spec::TaskSpec,
    /// True for tasks of `finally`.
    pub is_finally: bool,
    /// Where it is.
    pub status: crate::scheduler::TaskStatus,
    /// Attempts launched so far (the current or last attempt's number).
    pub attempts: u32,
    /// The last message (failure reason, skip reason).
    pub message: Option<&'a str>,
    /// Launch and end times, and the backend's handle.
    pub timing: &'a TaskTiming,
}

impl RecordedTask<'_> {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

impl RunRecord {
    /// Every task of the run — the `tasks`, then the `finally` tasks, in
    /// document order — with its status, attempts and times.
    ///
    /// ```
    /// # fn show(record: &stagetime_core::RunRecord) {
    /// for task in record.tasks() {
    ///     println!("{} {:?} after {} attempt(s)", task.name(), task.status, task.attempts);
    /// }
    /// # }
    /// ```
    pub fn tasks(&self) -> impl Iterator<Item = RecordedTask<'_>> {
        let main = self.spec.tasks.iter().map(|t| (t, false));
        let finally = self.spec.finally.iter().map(|t| (t, true));
        main.chain(finally)
            .zip(self.scheduler.tasks())
            .zip(self.timings.iter())
            .map(|(((spec, is_finally), state), timing)| RecordedTask {
                spec,
                is_finally,
                status: state.status,
                attempts: state.attempt,
                message: state.message.as_deref(),
                timing,
            })
    }

    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<RecordedTask<'_>> {
        self.tasks().find(|t| t.spec.name == name)
    }

    /// The listing view of this record.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            repo: self.spec.repo.clone(),
            commit: self.spec.commit.clone(),
            state: self.state,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            finished_ms: self.finished_ms,
            concurrency_group: self.spec.options.concurrency_group.clone(),
        }
    }

    /// Checks the layout version of a record just read.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a record of another layout.
    pub fn check_format(self) -> Result<Self> {
        if self.format == RECORD_FORMAT {
            Ok(self)
        } else {
            Err(Error::corrupt(
                format!("run {}", self.id),
                format!(
                    "record format {} is not the supported {RECORD_FORMAT}",
                    self.format
                ),
            ))
        }
    }
}

/// What listings show of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Id.
    pub id: RunId,
    /// Repository.
    pub repo: String,
    /// Commit.
    pub commit: String,
    /// State.
    pub state: RunState,
    /// Submitted at (ms).
    pub created_ms: u64,
    /// Last change (ms).
    pub updated_ms: u64,
    /// Finished at (ms).
    pub finished_ms: Option<u64>,
    /// Concurrency group, if any.
    pub concurrency_group: Option<String>,
}

/// A filter for [`Store::list_runs`]; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this repository.
    pub repo: Option<String>,
    /// Only this commit.
    pub commit: Option<String>,
    /// Only runs in one of these states.
    pub states: Vec<RunState>,
    /// Only this concurrency group.
    pub concurrency_group: Option<String>,
    /// At most this many (0: the store's default page size).
    pub limit: usize,
    /// Continue after this cursor (from [`RunPage::next`]).
    pub after: Option<String>,
}

impl RunFilter {
    /// True when `s` passes the filter (cursor and limit aside).
    pub fn matches(&self, s: &RunSummary) -> bool {
        self.repo.as_ref().is_none_or(|r| *r == s.repo)
            && self.commit.as_ref().is_none_or(|c| *c == s.commit)
            && (self.states.is_empty() || self.states.contains(&s.state))
            && self
                .concurrency_group
                .as_ref()
                .is_none_or(|g| Some(g) == s.concurrency_group.as_ref())
    }
}

/// One page of runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Cursor of the next page, if there is one.
    pub next: Option<String>,
}

/// A unit of work for an engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "work", rename_all = "snake_case")]
pub enum Work {
    /// Apply a scheduler event.
    Event {
        /// The event.
        event: Event,
    },
    /// The backend observed the end of an attempt (task by name; the engine
    /// maps it to the plan).
    Observed {
        /// Task name.
        task: String,
        /// Attempt.
        attempt: u32,
        /// How it ended.
        outcome: AttemptOutcome,
    },
    /// Carry out the run's outbox (after a failed or interrupted attempt).
    Flush,
}

/// Work for one run, due now or at `due_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The run.
    pub run: RunId,
    /// What to do.
    pub work: Work,
    /// Not before this time (ms since the epoch); `None`: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
}

impl WorkItem {
    /// Work due now.
    pub fn now(run: RunId, work: Work) -> Self {
        WorkItem {
            run,
            work,
            due_ms: None,
        }
    }

    /// An event due now.
    pub fn event(run: RunId, event: Event) -> Self {
        WorkItem::now(run, Work::Event { event })
    }
}

/// Identifies a claimed item for [`Store::ack`]; opaque to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClaimToken(pub String);

/// An item handed to one consumer until acknowledged or reclaimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Acknowledge with this.
    pub token: ClaimToken,
    /// The work.
    pub item: WorkItem,
    /// How often it has been handed out (1 the first time).
    pub deliveries: u32,
}

/// The result of [`Store::create_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The stored record (the existing one when `created` is false).
    pub record: RunRecord,
    /// False when the run existed already (an idempotent repeat).
    pub created: bool,
}

/// One atomic transition of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The new record; its `version` must be `expected_version + 1`.
    pub record: RunRecord,
    /// The version the writer read.
    pub expected_version: u64,
    /// Work the transition causes (timers, follow-ups).
    pub enqueue: Vec<WorkItem>,
    /// Claimed items the transition consumed.
    pub ack: Vec<ClaimToken>,
}

/// Where a webhook delivery is in the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Verified and recorded; not yet turned into runs.
    Pending,
    /// Turned into runs (or, by the repository's triggers, into none).
    Done,
    /// Could not become a run (e.g. the pipeline file is missing or invalid).
    Failed,
}

impl DeliveryState {
    /// The lowercase name (`pending`, `done`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Done => "done",
            DeliveryState::Failed => "failed",
        }
    }
}

/// A verified forge webhook delivery, recorded by the intake before it is
/// answered and settled once it has become runs (see [`Store::record_delivery`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The provider's delivery id, prefixed with the provider
    /// (`github:<X-GitHub-Delivery>`); unique per delivery.
    pub id: String,
    /// The repository, as the repositories file names it.
    pub repo: String,
    /// When the delivery was received (ms since the epoch).
    pub received_ms: u64,
    /// The event, as the intake encodes it (opaque to the store).
    pub event: String,
    /// Where it is.
    pub state: DeliveryState,
    /// Why it failed, or what it came to ("no task selected", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The runs it started (ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<String>,
}

fn reports_unsupported() -> Error {
    Error::Unsupported {
        message: "this store does not keep forge reports".to_string(),
    }
}

/// How long a forge report record is kept (default for
/// [`Store::track_report`]): beyond any run's life on a pull request.
pub const DEFAULT_REPORT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a delivery id is remembered (default for [`Store::record_delivery`]):
/// GitHub lets a delivery be redelivered for 3 days.
pub const DEFAULT_DELIVERY_TTL: Duration = Duration::from_secs(72 * 3600);

/// Where revision runs live, and the work queue engines share.
///
/// Implementations: [`crate::memory::MemoryStore`] (one process) and
/// `stagetime_redis::RedisStore` (many workers). Every implementation must
/// pass the conformance suite in `stagetime_core::testkit` (feature
/// `test-util`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new run and enqueues `start` with it, atomically.
    ///
    /// Idempotent on the run id: when a run with this id exists, nothing is
    /// written or enqueued and the existing record is returned with
    /// `created: false`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the store cannot be reached (nothing was
    /// written, or the write is complete — retrying is safe).
    async fn create_run(&self, record: RunRecord, start: Vec<WorkItem>) -> Result<Created>;

    /// Loads a run.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown (or expired) id; [`Error::Corrupt`]
    /// when the stored data cannot be read (that run only);
    /// [`Error::Unavailable`].
    async fn load_run(&self, id: &RunId) -> Result<RunRecord>;

    /// Writes a transition if the stored version is still
    /// `commit.expected_version`, enqueues `commit.enqueue` and acknowledges
    /// `commit.ack` — all or nothing.
    ///
    /// Not idempotent by itself: a repeat fails with a conflict, after which
    /// the engine reloads and reapplies its (idempotent) events.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the version moved on; [`Error::NotFound`]
    /// when the run is gone; [`Error::Unavailable`].
    async fn commit(&self, commit: Commit) -> Result<()>;

    /// Enqueues work from outside a transition (observed outcomes, cancel
    /// and rerun requests). At-least-once: the engine tolerates duplicates.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn enqueue(&self, items: Vec<WorkItem>) -> Result<()>;

    /// Hands up to `max` items to `consumer`: due delayed items, new items,
    /// and items another consumer claimed but did not acknowledge within the
    /// store's reclaim time (a dead worker). Waits up to `wait` when nothing
    /// is available. `now_ms` decides what is due (stores read no clock for
    /// that, so tests can drive time).
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Claimed>>;

    /// Acknowledges claimed items; unknown tokens are ignored (idempotent).
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn ack(&self, tokens: &[ClaimToken]) -> Result<()>;

    /// Renews claims this consumer still works on: their reclaim deadline
    /// becomes `now_ms` plus the store's reclaim time, so that only the
    /// work of a consumer that stopped renewing (a dead worker) is handed
    /// to another one — and that soon, whatever a batch takes. Tokens
    /// already acknowledged or reclaimed by another consumer are ignored.
    ///
    /// Idempotent. The default does nothing: a store whose claims do not
    /// expire while their consumer lives need not implement it.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn renew_claims(&self, tokens: &[ClaimToken], now_ms: u64) -> Result<()> {
        let _ = (tokens, now_ms);
        Ok(())
    }

    /// Lists runs matching `filter`, newest first, one page at a time, from
    /// an index (never a scan of the keyspace).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed cursor; [`Error::Unavailable`].
    async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage>;

    /// Deletes finished runs whose retention period ended before `now_ms`,
    /// with their pending work; returns how many went. Idempotent.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn purge_expired(&self, now_ms: u64) -> Result<u64>;

    /// Records a verified webhook delivery (state [`DeliveryState::Pending`])
    /// and puts it on the pending list, atomically, unless a delivery with
    /// this id was recorded within `ttl`. Returns true when it was new.
    ///
    /// Idempotent on `delivery.id`: a repeat within `ttl` writes nothing and
    /// returns false, whatever state the first one reached. The record (and
    /// the memory of its id) expires `ttl` after this call; a pending
    /// delivery stays on the pending list until settled.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (nothing was written, or all of it — retrying
    /// is safe).
    async fn record_delivery(&self, delivery: Delivery, ttl: Duration) -> Result<bool>;

    /// Up to `max` pending deliveries, oldest first. Does not claim them:
    /// two readers may get the same delivery, so turning one into runs must
    /// be idempotent (deterministic run ids) and end with
    /// [`Store::settle_delivery`].
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a stored delivery cannot be read;
    /// [`Error::Unavailable`].
    async fn pending_deliveries(&self, max: usize) -> Result<Vec<Delivery>>;

    /// Stores the final form of a delivery (state `Done` or `Failed`, its
    /// message and runs) and takes it off the pending list, keeping its
    /// expiry. Idempotent: settling twice keeps the last form; settling an
    /// unknown or expired id does nothing.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn settle_delivery(&self, delivery: Delivery) -> Result<()>;

    /// Up to `max` remembered deliveries in every state, newest first (for
    /// the CLI and metrics); expired ones are not listed.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when a stored delivery cannot be read;
    /// [`Error::Unavailable`].
    async fn list_deliveries(&self, max: usize) -> Result<Vec<Delivery>>;

    // Forge reporting: what was last reported to a forge for a subject (a
    // run, or a delivery that could not become one), so that every
    // transition is reported once across restarts. The record is opaque to
    // the store; the open set lists the subjects with something left to
    // report.

    /// Remembers `record` for `subject` (for `ttl`) and puts the subject on
    /// the open list, unless a record for it exists; true when it was new.
    ///
    /// Idempotent on `subject`: a repeat writes nothing. The default
    /// refuses: a store without it cannot carry forge reporting.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (default); [`Error::Unavailable`].
    async fn track_report(&self, subject: &str, record: String, ttl: Duration) -> Result<bool> {
        let _ = (subject, record, ttl);
        Err(reports_unsupported())
    }

    /// Replaces the record of a tracked `subject`, keeping its expiry, and
    /// keeps it on the open list (`open`) or takes it off. An unknown or
    /// expired subject stores nothing and is taken off the open list;
    /// returns whether the subject was known.
    ///
    /// Idempotent: saving twice keeps the last record.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (default); [`Error::Unavailable`].
    async fn save_report(&self, subject: &str, record: String, open: bool) -> Result<bool> {
        let _ = (subject, record, open);
        Err(reports_unsupported())
    }

    /// Up to `max` open subjects with their records, in subject order.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (default); [`Error::Unavailable`].
    async fn open_reports(&self, max: usize) -> Result<Vec<(String, String)>> {
        let _ = max;
        Err(reports_unsupported())
    }

    /// The record of `subject`, open or not, unless it expired.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (default); [`Error::Unavailable`].
    async fn load_report(&self, subject: &str) -> Result<Option<String>> {
        let _ = subject;
        Err(reports_unsupported())
    }

    /// The stored version of a run, for pollers that only want to know
    /// whether it changed (a server's watch). The default loads the record;
    /// stores answer it cheaper when they can.
    ///
    /// # Errors
    /// As [`Store::load_run`].
    async fn run_version(&self, id: &RunId) -> Result<u64> {
        Ok(self.load_run(id).await?.version)
    }

    /// The id of the store's data set: made when the data set is first
    /// used and kept with it, so a different answer later means the data
    /// was wiped or lost (e.g. Redis restarted without persistence) —
    /// every run stored before is gone. Callers remember the first answer
    /// and compare ([`EpochWatch`]).
    ///
    /// Idempotent: creates the epoch only when there is none. The default
    /// answers `Ok(None)`: a store that cannot lose its data behind the
    /// process's back (the in-memory store) has no epoch.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn epoch(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Queue figures and run counts by state at `now_ms`, for metrics.
    ///
    /// The default answers `Ok(None)`: a store that keeps no such figures
    /// cheaply need not provide them (metrics then omit them). Stores that
    /// answer must do so without scanning the keyspace.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn stats(&self, now_ms: u64) -> Result<Option<StoreStats>> {
        let _ = now_ms;
        Ok(None)
    }

    // ---- Task logs: the archive of each attempt's log tail (and, for
    // backends whose output only the worker can read, the live feed). ----

    /// Appends `text` — the bytes at offset `at` of attempt `key`'s whole
    /// log — to the log kept with the run, keeping only its last `keep`
    /// bytes, and marks the log complete when `end` is true.
    ///
    /// Idempotent: bytes before the stored end are not written again, so a
    /// retried append (or a writer starting over at 0) changes nothing; the
    /// writer passes its own count of bytes written as `at`. A gap (`at`
    /// beyond the stored end) drops what was kept, so the kept tail is
    /// always contiguous. The log lives and expires with its run: it is
    /// deleted when the run is purged (and, in stores with key expiry,
    /// expires with the run's record).
    ///
    /// The default refuses: a store that keeps no logs.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the run does not exist (a log is never kept
    /// without its run); [`Error::Unsupported`] from a store that keeps no
    /// logs; [`Error::Unavailable`].
    async fn append_log(
        &self,
        key: &LaunchKey,
        at: u64,
        text: &[u8],
        end: bool,
        keep: usize,
    ) -> Result<()> {
        let _ = (at, text, end, keep);
        Err(Error::Unsupported {
            message: format!("this store keeps no task logs (attempt {key})"),
        })
    }

    /// The kept log of attempt `key` from byte offset `from` (from the
    /// start of the kept tail when `from` is before it): `None` when nothing
    /// was written for that attempt, or its run is gone. Read-only.
    ///
    /// The default answers `None`: a store that keeps no logs.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn read_log(&self, key: &LaunchKey, from: u64) -> Result<Option<StoredLog>> {
        let _ = (key, from);
        Ok(None)
    }
}

/// How much of an attempt's log a store keeps by default: the last 1 MiB.
pub const DEFAULT_LOG_TAIL_BYTES: usize = 1 << 20;

/// One attempt's log as a store keeps it ([`Store::read_log`]): the tail of
/// what was written, placed by byte offsets in the whole log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLog {
    /// The kept bytes from the offset asked for (or from `start`, when that
    /// offset is no longer kept) to `end`. Raw bytes: a read may start or end
    /// inside a UTF-8 character.
    pub bytes: Vec<u8>,
    /// Offset of the first byte of `bytes` in the whole log.
    pub start: u64,
    /// How many bytes were written in all (the offset just past `bytes`).
    pub end: u64,
    /// True once the writer marked the log complete (the attempt ended).
    pub ended: bool,
}

/// Figures about the work queue, for metrics and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Items due now and not yet handed out to any consumer.
    pub ready: u64,
    /// Items handed out and not yet acknowledged (in flight, or held by a
    /// dead consumer until reclaimed).
    pub in_flight: u64,
    /// Items waiting for their due time (timers, retry backoffs); may be
    /// approximate (see the implementation).
    pub delayed: u64,
    /// Age of the oldest item that is ready or in flight, when the store
    /// can tell (`None`: unknown or nothing queued).
    pub oldest_age_ms: Option<u64>,
}

/// What [`Store::stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The work queue.
    pub queue: QueueStats,
    /// How many stored runs are in each state (every state listed, zeros included).
    pub runs_by_state: Vec<(RunState, u64)>,
}

/// Every run state, in lifecycle order.
pub const RUN_STATES: [RunState; 5] = [
    RunState::Queued,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
];

/// Remembers a store's first [`Store::epoch`] and tells when it changed.
#[derive(Debug, Default)]
pub struct EpochWatch {
    first: std::sync::Mutex<Option<String>>,
    lost_at_ms: std::sync::atomic::AtomicU64,
}

impl EpochWatch {
    /// Compares `epoch` (just read) with the first one seen: `true` when
    /// the store's data set changed since (it was wiped), remembering
    /// `now_ms` as when the loss was noticed. The new epoch becomes the
    /// one compared with next, so one loss is told once.
    pub fn changed(&self, epoch: Option<&str>, now_ms: u64) -> bool {
        let Some(epoch) = epoch else { return false };
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        match first.as_deref() {
            None => {
                *first = Some(epoch.to_string());
                false
            }
            Some(seen) if seen == epoch => false,
            Some(_) => {
                *first = Some(epoch.to_string());
                self.lost_at_ms
                    .store(now_ms.max(1), std::sync::atomic::Ordering::Relaxed);
                true
            }
        }
    }

    /// When a loss was last noticed (ms since the epoch), if ever.
    pub fn lost_at_ms(&self) -> Option<u64> {
        match self.lost_at_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }
}

/// A store that is shared behind an `Arc`.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// How long a claimed item may stay unacknowledged before another consumer
/// may take it over (default for stores).
/// Workers renew the claims they hold every second or so
/// ([`Store::renew_claims`]), so this only has to outlast a renewal missed
/// now and then: a dead worker's work moves on within these seconds.
pub const DEFAULT_RECLAIM_AFTER: Duration = Duration::from_secs(5);

/// How long finished runs are kept (default for stores).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[allow(dead_code)]
fn _assert_object_safe(_: &dyn Store) {}

#[cfg(test)]
mod tests {
    use super::{EpochWatch, RunId};

    #[test]
    fn derived_ids_keep_their_format() {
        // The id the README's quickstart shows for the demo (pinned: ids are
        // how a repeated submission finds its run).
        let text = include_str!("../../examples/pipelines/demo.yaml");
        let (spec, _) = crate::spec::parse_document("demo.yaml", text).unwrap();
        assert_eq!(RunId::derive(&spec).as_str(), "demo-4f1c2e9a77-bad1d0d739");
        let id = RunId::readable(&[("Hello World!", 24), ("", 12)], b"k", 2);
        assert!(id.as_str().starts_with("hello-world-"), "{id}");
        assert_eq!(id.as_str().len(), "hello-world-".len() + 4);
        assert!(RunId::new(id.as_str()).is_ok());
    }

    #[test]
    fn a_new_epoch_is_a_loss_told_once() {
        let w = EpochWatch::default();
        assert!(!w.changed(None, 1));
        assert!(!w.changed(Some("a"), 2));
        assert!(!w.changed(Some("a"), 3));
        assert_eq!(w.lost_at_ms(), None);
        assert!(w.changed(Some("b"), 4));
        assert_eq!(w.lost_at_ms(), Some(4));
        assert!(!w.changed(Some("b"), 5), "told once");
    }
}

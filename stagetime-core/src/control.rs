//! `RunControl`: submit, cancel and rerun runs through a [`Store`] — what a
//! server or CLI needs, without a backend.

use std::sync::Arc;

use tracing::info;

use crate::backend::Capabilities;
use crate::engine::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::scheduler::{Event, StageScheduler};
use crate::spec::RevisionRunSpec;
use crate::store::{
    Commit, RECORD_FORMAT, RunFilter, RunId, RunRecord, RunState, Store, TaskTiming, WorkItem,
};
use crate::view::{PlanCache, RunView};

/// Run annotations under this prefix are stagetime's own (e.g.
/// `stagetime/owner` becomes the PipelineRuns' owner reference, which
/// Kubernetes garbage-collects with its owner; the webhook intake records
/// the forge event under it): only trusted submitters may set them.
pub const RESERVED_ANNOTATION_PREFIX: &str = "stagetime/";

/// How [`RunControl::submit_with`] treats a submission.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubmitOptions<'a> {
    /// Refuse tasks this backend (capabilities, name) cannot run.
    pub runnable_by: Option<(Capabilities, &'a str)>,
    /// The submitter is stagetime itself (the operator, the webhook intake)
    /// and may set annotations under [`RESERVED_ANNOTATION_PREFIX`].
    pub trusted: bool,
}

/// The result of [`RunControl::submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The run's id.
    pub id: RunId,
    /// False when the same run had been submitted before (nothing new was created).
    pub created: bool,
}

/// Submits and controls runs in a store.
#[derive(Clone)]
pub struct RunControl {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    plans: Arc<PlanCache>,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl").finish_non_exhaustive()
    }
}

impl RunControl {
    /// Control over the runs of `store`, stamped with the system clock.
    pub fn new(store: Arc<dyn Store>) -> Self {
        RunControl {
            store,
            clock: Arc::new(SystemClock),
            plans: Arc::new(PlanCache::default()),
        }
    }

    /// Shares `plans` (e.g. an engine's) instead of a cache of its own.
    pub fn with_plans(mut self, plans: Arc<PlanCache>) -> Self {
        self.plans = plans;
        self
    }

    /// The view of a run, from its record and its cached plan.
    ///
    /// # Errors
    /// As [`Store::load_run`]; [`Error::Corrupt`] when the stored spec does
    /// not build a plan.
    pub async fn view(&self, id: &RunId) -> Result<RunView> {
        let record = self.store.load_run(id).await?;
        self.plans.view(&record)
    }

    /// The view of a record just read (a watcher's poll).
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the stored spec does not build a plan.
    pub fn view_of(&self, record: &RunRecord) -> Result<RunView> {
        self.plans.view(record)
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Loads a run.
    ///
    /// # Errors
    /// As [`Store::load_run`].
    pub async fn get(&self, id: &RunId) -> Result<RunRecord> {
        self.store.load_run(id).await
    }

    /// Validates and stores a run from an API client, and queues its start:
    /// [`RunControl::submit_with`] for an untrusted submitter.
    ///
    /// # Errors
    /// As [`RunControl::submit_with`].
    pub async fn submit(
        &self,
        spec: RevisionRunSpec,
        backend: Option<(Capabilities, &str)>,
    ) -> Result<Submitted> {
        self.submit_with(
            spec,
            SubmitOptions {
                runnable_by: backend,
                trusted: false,
            },
        )
        .await
    }

    /// Validates and stores a run, and queues its start.
    ///
    /// Idempotent: the id is `spec.id` or derived from repo, commit and
    /// content, and submitting the same document again returns the existing
    /// run with `created: false`. When the spec names a concurrency group
    /// with `cancel_in_progress`, older unfinished runs of the group are
    /// cancelled (again on a repeated submission, in case the first one
    /// stopped half-way).
    ///
    /// # Errors
    /// [`Error::Invalid`] with every problem of the spec (nothing is stored):
    /// annotations under [`RESERVED_ANNOTATION_PREFIX`] from an untrusted
    /// submitter, and tasks `options.runnable_by` cannot run, included;
    /// [`Error::AlreadyExists`] when a run with this id exists with a
    /// different document; store errors.
    pub async fn submit_with(
        &self,
        spec: RevisionRunSpec,
        options: SubmitOptions<'_>,
    ) -> Result<Submitted> {
        if !options.trusted {
            refuse_reserved_annotations(&spec)?;
        }
        let backend = options.runnable_by;
        let id = match &spec.id {
            Some(id) => RunId::new(id.clone())?,
            None => RunId::derive(&spec),
        };
        let plan = Arc::new(Plan::build(spec)?);
        if let Some((caps, name)) = backend {
            caps.check(&plan, name)?;
        }
        let seed = seed_of(&id);
        let scheduler = StageScheduler::new(Arc::clone(&plan), seed).into_state();
        let now = self.clock.now_ms();
        let record = RunRecord {
            format: RECORD_FORMAT,
            id: id.clone(),
            version: 1,
            spec: plan.to_spec(),
            state: RunState::of(&scheduler),
            scheduler,
            created_ms: now,
            updated_ms: now,
            finished_ms: None,
            timings: vec![TaskTiming::default(); plan.len()],
            outbox: Vec::new(),
        };
        let spec = record.spec.clone();
        let stored = record.clone();
        let created = self
            .store
            .create_run(record, vec![WorkItem::event(id.clone(), Event::Start)])
            .await?;
        if created.created {
            self.plans.insert(&stored, Arc::clone(&plan));
            info!(run = %id, tasks = plan.len(), "run submitted");
        } else if created.record.spec != spec {
            // Same id, other content: returning the old run would silently
            // drop the new document.
            return Err(Error::AlreadyExists {
                what: format!("run {id}"),
                message: "a run with this id exists with a different document; \
                          give the new document another id"
                    .to_string(),
            });
        }
        // Also on a repeated submission: the first one may have stopped
        // between storing the run and cancelling the older ones.
        if let Some(group) = plan.spec.options.concurrency_group.clone()
            && plan.spec.options.cancel_in_progress
        {
            // A new run cancels every other; a repeat only strictly older ones.
            let created_before = (!created.created).then_some(created.record.created_ms);
            self.cancel_older_in_group(&id, &group, created_before)
                .await?;
        }
        Ok(Submitted {
            id,
            created: created.created,
        })
    }

    /// Cancels the unfinished runs of `group` other than `id` — only those
    /// created before `created_before` when given (a repeated submission of
    /// an older run must never cancel a newer one).
    async fn cancel_older_in_group(
        &self,
        id: &RunId,
        group: &str,
        created_before: Option<u64>,
    ) -> Result<()> {
        let mut filter = RunFilter {
            concurrency_group: Some(group.to_string()),
            states: vec![RunState::Queued, RunState::Running],
            limit: 1000,
            ..RunFilter::default()
        };
        loop {
            let page = self.store.list_runs(&filter).await?;
            let older: Vec<WorkItem> = page
                .runs
                .iter()
                .filter(|r| r.id != *id && created_before.is_none_or(|ms| r.created_ms < ms))
                .map(|r| {
                    info!(run = %r.id, newer = %id, group, "cancelling older run of the concurrency group");
                    WorkItem::event(r.id.clone(), Event::CancelRequested)
                })
                .collect();
            if !older.is_empty() {
                self.store.enqueue(older).await?;
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Asks for a run to be cancelled. Idempotent; a finished run stays as it is.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run; store errors.
    pub async fn cancel(&self, id: &RunId) -> Result<()> {
        self.store.load_run(id).await?;
        self.store
            .enqueue(vec![WorkItem::event(id.clone(), Event::CancelRequested)])
            .await
    }

    /// Asks for a finished run to be run again, keeping its succeeded tasks;
    /// returns the run's version after the request was recorded (a watcher
    /// waits for a newer one).
    ///
    /// A compare-and-set: the request is recorded with the run's version
    /// bumped, only if the stored version is still the one read (and, when
    /// given, `expected_version`) — of two concurrent reruns of one version,
    /// exactly one is accepted, so a repeated request never runs a run a
    /// third time.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run; [`Error::Invalid`] naming `id`
    /// when the run has not finished; [`Error::Conflict`] naming
    /// `expected_version` when the run is at another version (it changed,
    /// or was rerun already); store errors.
    pub async fn rerun(&self, id: &RunId, expected_version: Option<u64>) -> Result<u64> {
        self.rerun_tasks(id, expected_version, &[]).await
    }

    /// [`RunControl::rerun`], also running `tasks` again although they
    /// succeeded, with everything downstream of them (their `needs`
    /// dependents and the later stages): `/retest NAME`.
    ///
    /// # Errors
    /// As [`RunControl::rerun`], and [`Error::Invalid`] naming
    /// `tasks[i]` for a name that is not a task of the run.
    pub async fn rerun_tasks(
        &self,
        id: &RunId,
        expected_version: Option<u64>,
        tasks: &[String],
    ) -> Result<u64> {
        let record = self.store.load_run(id).await?;
        let forced = if tasks.is_empty() {
            Vec::new()
        } else {
            let plan = self.plans.plan(&record)?;
            let mut errors = crate::FieldErrors::default();
            let mut forced = Vec::with_capacity(tasks.len());
            for (i, name) in tasks.iter().enumerate() {
                match plan.index_of(name) {
                    Some(t) => forced.push(t),
                    None => errors.push(
                        format!("tasks[{i}]"),
                        format!("run {id} has no task {}", crate::error::cut(name, 100)),
                    ),
                }
            }
            errors.into_result(forced)?
        };
        if let Some(expected) = expected_version
            && expected != record.version
        {
            return Err(Error::Conflict {
                what: format!("run {id}"),
                detail: format!(
                    "expected_version: the run is at version {}, not {expected}: it changed (was it rerun already?)",
                    record.version
                ),
            });
        }
        if !record.state.is_finished() {
            return Err(not_finished(id, record.state));
        }
        let mut next = record.clone();
        next.version = record.version + 1;
        next.updated_ms = self.clock.now_ms().max(record.updated_ms);
        let version = next.version;
        self.store
            .commit(Commit {
                record: next,
                expected_version: record.version,
                enqueue: vec![WorkItem::event(
                    id.clone(),
                    Event::RerunRequested { tasks: forced },
                )],
                ack: Vec::new(),
            })
            .await?;
        Ok(version)
    }
}

/// The one rule for what only a finished run may do.
fn not_finished(id: &RunId, state: RunState) -> Error {
    let mut e = crate::FieldErrors::default();
    e.push(
        "id",
        format!(
            "run {id} is {}; only a finished run can be rerun",
            state.as_str()
        ),
    );
    Error::Invalid(e)
}

/// API clients may not set stagetime's own annotations.
fn refuse_reserved_annotations(spec: &RevisionRunSpec) -> Result<()> {
    let mut errors = crate::FieldErrors::default();
    for key in spec.annotations.keys() {
        if key.starts_with(RESERVED_ANNOTATION_PREFIX) {
            errors.push(
                format!("annotations[{key:?}]"),
                format!("keys under {RESERVED_ANNOTATION_PREFIX:?} are reserved for stagetime"),
            );
        }
    }
    errors.into_result(())
}

/// The scheduler's jitter seed for a run, stable across engines.
fn seed_of(id: &RunId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::scheduler::SchedulerState;

    fn spec(annotation: &str) -> RevisionRunSpec {
        serde_json::from_value(serde_json::json!({
            "repo": "app", "commit": "abc",
            "annotations": {annotation: "x"},
            "tasks": [{"name": "a", "command": "true"}],
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn only_trusted_submitters_may_set_stagetimes_annotations() {
        let store = Arc::new(MemoryStore::new());
        let control = RunControl::new(store.clone());
        let err = control
            .submit(spec("stagetime/owner"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert!(
            err.to_string().contains("annotations[\"stagetime/owner\"]"),
            "{err}"
        );
        let listed = store.list_runs(&RunFilter::default()).await.unwrap();
        assert!(listed.runs.is_empty(), "nothing is stored");

        control.submit(spec("team"), None).await.unwrap();
        let trusted = SubmitOptions {
            trusted: true,
            ..SubmitOptions::default()
        };
        let s = control
            .submit_with(spec("stagetime/owner"), trusted)
            .await
            .unwrap();
        assert!(s.created);
    }

    /// Finishes a stored run by hand (no engine needed for the rule).
    async fn finish(store: &MemoryStore, id: &RunId) -> u64 {
        let record = store.load_run(id).await.unwrap();
        let mut done = record.clone();
        let mut state: serde_json::Value = serde_json::to_value(&record.scheduler).unwrap();
        state["phase"] = "done".into();
        state["outcome"] = "succeeded".into();
        done.scheduler = serde_json::from_value::<SchedulerState>(state).unwrap();
        done.state = RunState::Succeeded;
        done.version += 1;
        store
            .commit(Commit {
                record: done,
                expected_version: record.version,
                enqueue: vec![],
                ack: vec![],
            })
            .await
            .unwrap();
        record.version + 1
    }

    #[tokio::test]
    async fn rerun_is_a_compare_and_set_on_the_version() {
        let store = Arc::new(MemoryStore::new());
        let control = RunControl::new(store.clone());
        let id = control.submit(spec("team"), None).await.unwrap().id;
        let err = control.rerun(&id, None).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid, "not finished: {err}");
        assert!(
            err.to_string().contains("only a finished run can be rerun"),
            "{err}"
        );

        let version = finish(&store, &id).await;
        let (a, b) = tokio::join!(
            control.rerun(&id, Some(version)),
            control.rerun(&id, Some(version))
        );
        let accepted = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            accepted, 1,
            "exactly one of two concurrent reruns: {a:?} {b:?}"
        );
        let refused = if a.is_err() { a } else { b }.unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::Conflict, "{refused}");
        assert!(
            refused.to_string().contains("expected_version"),
            "{refused}"
        );
        assert_eq!(store.load_run(&id).await.unwrap().version, version + 1);
    }
}

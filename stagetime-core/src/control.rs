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
    RECORD_FORMAT, RunFilter, RunId, RunRecord, RunState, Store, TaskTiming, WorkItem,
};

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
        }
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
    /// [`Error::Invalid`] with every problem of the spec (nothing is stored),
    /// including tasks the backend cannot run; [`Error::AlreadyExists`] when
    /// a run with this id exists with a different document; store errors.
    /// `backend` (capabilities and name), when given, rejects tasks that
    /// backend cannot run.
    pub async fn submit(
        &self,
        spec: RevisionRunSpec,
        backend: Option<(Capabilities, &str)>,
    ) -> Result<Submitted> {
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
        let created = self
            .store
            .create_run(record, vec![WorkItem::event(id.clone(), Event::Start)])
            .await?;
        if created.created {
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

    /// Asks for a finished run to be run again, keeping its succeeded tasks.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run; [`Error::Invalid`] naming `id`
    /// when the run has not finished; store errors.
    pub async fn rerun(&self, id: &RunId) -> Result<()> {
        let record = self.store.load_run(id).await?;
        if !record.state.is_finished() {
            let mut e = crate::FieldErrors::default();
            e.push(
                "id",
                format!(
                    "run {id} is {}; only a finished run can be rerun",
                    record.state.as_str()
                ),
            );
            return Err(Error::Invalid(e));
        }
        self.store
            .enqueue(vec![WorkItem::event(id.clone(), Event::RerunRequested)])
            .await
    }
}

/// The scheduler's jitter seed for a run, stable across engines.
fn seed_of(id: &RunId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

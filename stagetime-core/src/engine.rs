//! The engine: drives the pure scheduler with a [`Backend`] and a [`Store`].
//!
//! Any number of engines may share one store. Each claims work items, applies
//! them to the run's scheduler, and commits the transition with a
//! compare-and-set on the run's version. Launch and cancel commands go to the
//! run's *outbox* in the same commit and are carried out afterwards; the
//! consumed work is acknowledged only once the outbox is empty again, so a
//! crash at any point leaves work that another engine reclaims, replays
//! (events are idempotent) and finishes (launches are idempotent on their key).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, HousekeepingPolicy, LaunchKey, LaunchRequest, Observation};
use crate::control::{RunControl, Submitted};
use crate::error::{Error, ErrorKind, Result};
use crate::plan::Plan;
use crate::scheduler::{
    AttemptOutcome, Command, Event, SchedulerState, StageScheduler, TaskStatus,
};
use crate::spec::RevisionRunSpec;
use crate::store::{
    AttemptTiming, ClaimToken, Claimed, Commit, RunFilter, RunId, RunRecord, RunState, Store,
    TaskTiming, Work, WorkItem,
};
use crate::view::PlanCache;

/// A source of wall-clock time (ms since the epoch). The scheduler reads no
/// clock; the engine stamps times and computes timer due dates with this.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(crate::limits::millis)
            .unwrap_or(0)
    }
}

/// A clock that follows tokio's time, so tests with paused time
/// (`tokio::time::pause`) drive timers and timeouts deterministically.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock starting at the current wall time. Call inside a runtime.
    pub fn new() -> Self {
        TokioClock {
            base_ms: SystemClock.now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms
            .saturating_add(crate::limits::millis(self.start.elapsed()))
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This engine's consumer name in the work queue (unique per engine).
    pub consumer: String,
    /// At most this many work items per claim.
    pub batch: usize,
    /// How long one claim waits for work.
    pub claim_wait: Duration,
    /// How often finished runs past retention are purged (`None`: never).
    pub purge_every: Option<Duration>,
    /// Backend housekeeping: how often, and what it may delete (`None`: never).
    pub housekeeping: Option<HousekeepingPolicy>,
    /// Reconcile running runs with the backend when the engine starts.
    pub reconcile_on_start: bool,
    /// At shutdown, how long the batch being applied may take to finish;
    /// past it, its unacknowledged items are left for another engine to
    /// reclaim.
    pub drain_timeout: Duration,
    /// While a batch is applied, how often its claims are renewed
    /// ([`Store::renew_claims`]): keep it well below the store's reclaim
    /// time, so that only a dead engine's work is taken over.
    pub renew_claims_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            consumer: format!("engine-{}-{:x}", std::process::id(), SystemClock.now_ms()),
            batch: 256,
            claim_wait: Duration::from_secs(1),
            purge_every: Some(Duration::from_secs(60)),
            housekeeping: None,
            reconcile_on_start: true,
            drain_timeout: Duration::from_secs(30),
            renew_claims_every: Duration::from_secs(1),
        }
    }
}

/// Observes what an engine does, for metrics and logs — core depends on no
/// metrics library; binaries implement this with theirs. Every method has
/// an empty default and must return quickly (it runs on the engine's path).
pub trait EngineListener: Send + Sync + 'static {
    /// A transition of a run was committed, from `before` to `after`.
    fn committed(&self, before: &RunRecord, after: &RunRecord) {
        let _ = (before, after);
    }

    /// A backend call failed (`op`: `launch` or `cancel`), retryable or
    /// not; every failed call is reported, retries included.
    fn backend_error(&self, op: &'static str, error: &Error) {
        let _ = (op, error);
    }

    /// A store call failed (`op`: `claim`, `commit`, `enqueue`).
    fn store_error(&self, op: &'static str, error: &Error) {
        let _ = (op, error);
    }

    /// A commit lost a compare-and-set race to another engine and is retried.
    fn conflict(&self) {}

    /// Processing run `run` failed unexpectedly (a panic, a corrupt
    /// record): the run was quarantined — marked failed where its record
    /// could be read — and its work acknowledged. `reason` says what failed.
    fn quarantined(&self, run: &RunId, reason: &str) {
        let _ = (run, reason);
    }
}

/// The listener that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListener;

impl EngineListener for NoListener {}

/// Bounded retries of a commit that lost a compare-and-set race.
const MAX_CONFLICTS: usize = 64;
/// Bounded passes of launch → commit → launch within one claim.
const MAX_PASSES: usize = 1024;
/// Attempts of one backend call before handing it back to the queue.
const BACKEND_TRIES: u32 = 3;

/// Drives revision runs: see the module documentation.
pub struct Engine {
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    plans: Arc<PlanCache>,
    updates: broadcast::Sender<Arc<RunRecord>>,
    listener: Arc<dyn EngineListener>,
    /// How many [`Engine::run`] loops (and [`Engine::spawn`]s not yet
    /// polled) there are: [`Engine::wait_finished`] refuses to wait without one.
    loops: Arc<AtomicUsize>,
}

/// Counts one run loop while alive.
struct LoopGuard(Arc<AtomicUsize>);

impl LoopGuard {
    fn enter(loops: &Arc<AtomicUsize>) -> Self {
        loops.fetch_add(1, Ordering::SeqCst);
        LoopGuard(Arc::clone(loops))
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Capacity of [`Engine::subscribe`]'s channel, in records. A record is as
/// big as its run, so this keeps the memory of a slow subscriber (a
/// progress display) at a few runs' worth; a subscriber that falls further
/// behind is told it lagged and reloads the run.
pub const UPDATES_CAPACITY: usize = 16;

/// A running engine started by [`Engine::spawn`]. Dropping it shuts the
/// engine down too (gracefully, in the background).
#[derive(Debug)]
#[must_use = "dropping the handle shuts the engine down"]
pub struct EngineHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl EngineHandle {
    /// Shuts the engine down gracefully (see [`Engine::run`]) and waits for it.
    ///
    /// # Errors
    /// As [`Engine::run`]; [`Error::Unavailable`] when its task panicked.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::unavailable("engine", format!("the engine task failed: {e}")))?
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with the default configuration and the system clock.
    pub fn new(store: Arc<dyn Store>, backend: Arc<dyn Backend>) -> Self {
        Engine {
            store,
            backend,
            clock: Arc::new(SystemClock),
            config: EngineConfig::default(),
            plans: Arc::new(PlanCache::default()),
            updates: broadcast::channel(UPDATES_CAPACITY).0,
            listener: Arc::new(NoListener),
            loops: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Replaces the listener (metrics).
    pub fn with_listener(mut self, listener: Arc<dyn EngineListener>) -> Self {
        self.listener = listener;
        self
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the clock (tests use [`TokioClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Every record this engine commits, from now on, as it commits it (for
    /// progress displays). Records committed by other engines sharing the
    /// store are not included.
    ///
    /// A [`tokio::sync::broadcast`] channel holding the newest
    /// [`UPDATES_CAPACITY`] records: a receiver that falls further behind
    /// gets [`broadcast::error::RecvError::Lagged`] (the oldest records are
    /// gone; reload what it shows from the store) and then continues with
    /// the records still held. Sending never waits for receivers, so a slow
    /// receiver never slows the engine.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunRecord>> {
        self.updates.subscribe()
    }

    /// Validates and stores a run, and queues its start; see [`RunControl::submit`].
    /// Tasks this engine's backend cannot run are rejected too.
    ///
    /// # Errors
    /// As [`RunControl::submit`].
    pub async fn submit(&self, spec: RevisionRunSpec) -> Result<Submitted> {
        let caps = self.backend.capabilities();
        self.control()
            .submit(spec, Some((caps, self.backend.name())))
            .await
    }

    /// Asks for a run to be cancelled; see [`RunControl::cancel`].
    ///
    /// # Errors
    /// As [`RunControl::cancel`].
    pub async fn cancel(&self, id: &RunId) -> Result<()> {
        self.control().cancel(id).await
    }

    /// Asks for a finished run to be rerun; see [`RunControl::rerun`].
    ///
    /// # Errors
    /// As [`RunControl::rerun`].
    pub async fn rerun(&self, id: &RunId) -> Result<()> {
        self.control().rerun(id, None).await.map(|_| ())
    }

    /// Submission and control of runs through this engine's store and clock.
    pub fn control(&self) -> RunControl {
        RunControl::new(Arc::clone(&self.store))
            .with_clock(Arc::clone(&self.clock))
            .with_plans(Arc::clone(&self.plans))
    }

    /// Starts [`Engine::run`] on a tokio task, for embedding: the engine runs
    /// until [`EngineHandle::shutdown`] is called or the handle is dropped.
    /// Call it inside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> stagetime_core::Result<()> {
    /// use std::sync::Arc;
    /// use stagetime_core::{AttemptOutcome, Capabilities, Engine, FnBackend, MemoryStore, RevisionRunSpec, RunState, TaskSpec};
    ///
    /// let backend = FnBackend::new("ok", Capabilities::CUSTOM, |_, _| async { AttemptOutcome::Succeeded });
    /// let engine = Arc::new(Engine::new(Arc::new(MemoryStore::new()), Arc::new(backend)));
    /// let running = engine.spawn();
    /// let spec = RevisionRunSpec::new("demo", "c0ffee").task(TaskSpec::new("a").custom(1.into()));
    /// let run = engine.submit(spec).await?;
    /// assert_eq!(engine.wait_finished(&run.id).await?.state, RunState::Succeeded);
    /// running.shutdown().await
    /// # }
    /// ```
    pub fn spawn(self: &Arc<Self>) -> EngineHandle {
        let guard = LoopGuard::enter(&self.loops);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let engine = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _guard = guard;
            engine
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        });
        EngineHandle {
            stop: Some(stop),
            task,
        }
    }

    /// Runs the engine until `shutdown` resolves: claims and applies work,
    /// feeds backend observations into the queue, reconciles running runs at
    /// start, purges expired runs and does backend housekeeping periodically.
    ///
    /// Store or backend outages are logged and retried with backoff; they do
    /// not end the loop.
    ///
    /// Shutdown is graceful: no new work is claimed, the claim under way
    /// (at most [`EngineConfig::claim_wait`]) and the batch being applied
    /// finish (for up to [`EngineConfig::drain_timeout`]). Work still
    /// unacknowledged after that — none, unless the drain timed out — stays
    /// in the store, which hands it to another engine after its reclaim time.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the work loop died (a panic while
    /// applying work): the process should exit so that it is restarted, and
    /// its unacknowledged work is reclaimed by other engines.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let _running = LoopGuard::enter(&self.loops);
        // Subscribe before any work is claimed, so no launch can finish unseen.
        let observations = self.backend.observe();
        let observer = tokio::spawn(Arc::clone(&self).forward_observations(observations));
        let chores = tokio::spawn(Arc::clone(&self).chores());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut work = tokio::spawn(Arc::clone(&self).work_loop(stop_rx));
        tokio::select! {
            _ = shutdown => {
                info!(consumer = %self.config.consumer, "engine shutting down: finishing the batch in hand");
                let _ = stop_tx.send(true);
                let drain = self.config.drain_timeout + self.config.claim_wait;
                if tokio::time::timeout(drain, &mut work).await.is_err() {
                    warn!(consumer = %self.config.consumer, "batch not finished in time; its work will be reclaimed");
                    work.abort();
                }
            }
            ended = &mut work => {
                // The loop only returns when asked to stop: this is a panic.
                observer.abort();
                chores.abort();
                let why = match ended {
                    Err(e) => e.to_string(),
                    Ok(()) => "it returned unasked".to_string(),
                };
                error!(consumer = %self.config.consumer, %why, "engine work loop died");
                return Err(Error::unavailable("engine", format!("the work loop stopped: {why}")));
            }
        }
        observer.abort();
        chores.abort();
        Ok(())
    }

    async fn work_loop(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        if self.config.reconcile_on_start {
            self.reconcile_running().await;
        }
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let now = self.clock.now_ms();
            let claimed = match self
                .store
                .claim(
                    &self.config.consumer,
                    self.config.batch,
                    now,
                    self.config.claim_wait,
                )
                .await
            {
                Ok(c) => {
                    backoff.reset();
                    c
                }
                Err(e) => {
                    self.listener.store_error("claim", &e);
                    warn!(error = %e, "claiming work failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            if claimed.is_empty() {
                continue;
            }
            self.process_batch(claimed).await;
        }
    }

    /// Applies a batch of claimed work, grouped by run (one load and commit
    /// per run rather than per item).
    pub async fn process_batch(&self, claimed: Vec<Claimed>) {
        let held: Vec<ClaimToken> = claimed.iter().map(|c| c.token.clone()).collect();
        let mut groups: Vec<(RunId, Vec<Claimed>)> = Vec::new();
        let mut index: HashMap<RunId, usize> = HashMap::new();
        for c in claimed {
            match index.get(&c.item.run) {
                Some(&i) => groups[i].1.push(c),
                None => {
                    index.insert(c.item.run.clone(), groups.len());
                    groups.push((c.item.run.clone(), vec![c]));
                }
            }
        }
        let runs = groups.into_iter().map(|(id, items)| async move {
            let tokens: Vec<ClaimToken> = items.iter().map(|c| c.token.clone()).collect();
            // A panic is confined to its run: the others of the batch go on.
            let processed = std::panic::AssertUnwindSafe(self.process_run(&id, items))
                .catch_unwind()
                .await;
            match processed {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == ErrorKind::Corrupt => {
                    self.quarantine(&id, &tokens, &e.to_string()).await;
                }
                Ok(Err(e)) => {
                    self.listener.store_error("commit", &e);
                    warn!(run = %id, error = %e, "run not advanced; its work will be retried");
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_string());
                    let reason = format!("processing the run panicked: {what}");
                    self.quarantine(&id, &tokens, &reason).await;
                }
            }
        });
        // The claims stay this engine's while it works on them, however long
        // that takes; renewing stops with the batch (a dead engine stops too).
        let renew = async {
            loop {
                tokio::time::sleep(self.config.renew_claims_every).await;
                if let Err(e) = self.store.renew_claims(&held, self.clock.now_ms()).await {
                    self.listener.store_error("renew", &e);
                    warn!(error = %e, "cannot renew the claims in hand");
                }
            }
        };
        tokio::select! {
            _ = futures::future::join_all(runs) => {}
            _ = renew => {}
        }
    }

    /// The plans of the runs this engine drives, built once per run.
    pub fn plans(&self) -> &PlanCache {
        &self.plans
    }

    /// Ends a run whose processing failed unexpectedly: marks it failed
    /// (every task not over says why), cancels its running attempts as far
    /// as the backend allows, and acknowledges its work, so that it neither
    /// comes back to crash engine after engine nor holds up other runs.
    /// A record that cannot be read is only acknowledged.
    async fn quarantine(&self, id: &RunId, tokens: &[ClaimToken], reason: &str) {
        // A panic message or a corrupt record may be long; the gist is at the start.
        let reason: String = reason.chars().take(1_000).collect();
        let reason = reason.as_str();
        error!(run = %id, reason, "quarantining the run: processing it failed unexpectedly");
        self.listener.quarantined(id, reason);
        self.plans.forget(id);
        let message = format!("internal error: {reason}");
        for _ in 0..MAX_CONFLICTS {
            let record = match self.store.load_run(id).await {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => {
                    if let Err(e) = self.store.ack(tokens).await {
                        warn!(run = %id, error = %e, "cannot acknowledge the work of a quarantined run");
                    }
                    return;
                }
                Err(e) => {
                    warn!(run = %id, error = %e, "cannot quarantine the run now; its work will be retried");
                    return;
                }
            };
            let now = self.clock.now_ms();
            let mut next = record.clone();
            for (task, attempt) in next.scheduler.quarantine(&message) {
                let name = record
                    .spec
                    .tasks
                    .iter()
                    .chain(&record.spec.finally)
                    .nth(task as usize)
                    .map(|t| t.name.clone());
                if let Some(task) = name {
                    let key = LaunchKey {
                        run: id.clone(),
                        task,
                        attempt,
                    };
                    // The backend may be what panicked: confine it here too.
                    let cancelled = std::panic::AssertUnwindSafe(self.backend.cancel(&key))
                        .catch_unwind()
                        .await;
                    if !matches!(cancelled, Ok(Ok(()))) {
                        warn!(%key, "cannot cancel an attempt of a quarantined run");
                    }
                }
            }
            next.version = record.version + 1;
            next.updated_ms = now;
            next.outbox.clear();
            next.state = RunState::of(&next.scheduler);
            next.finished_ms.get_or_insert(now);
            let commit = Commit {
                expected_version: record.version,
                record: next.clone(),
                enqueue: Vec::new(),
                ack: tokens.to_vec(),
            };
            match self.store.commit(commit).await {
                Ok(()) => {
                    self.listener.committed(&record, &next);
                    let _ = self.updates.send(Arc::new(next));
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => {
                    warn!(run = %id, error = %e, "cannot record the quarantine; its work will be retried");
                    return;
                }
            }
        }
    }

    /// Applies `items` to run `id` and carries out what they cause.
    async fn process_run(&self, id: &RunId, items: Vec<Claimed>) -> Result<()> {
        let tokens: Vec<ClaimToken> = items.iter().map(|c| c.token.clone()).collect();
        let mut record = match self.store.load_run(id).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                debug!(run = %id, "dropping work of a run that no longer exists");
                return self.store.ack(&tokens).await;
            }
            // Corrupt records are quarantined by the caller.
            Err(e) => return Err(e),
        };
        let plan = self.plans.plan(&record)?;
        let mut events = Vec::with_capacity(items.len());
        for c in &items {
            match &c.item.work {
                Work::Event { event } => events.push(event.clone()),
                Work::Observed {
                    task,
                    attempt,
                    outcome,
                } => match plan.index_of(task) {
                    Some(task) => events.push(Event::TaskFinished {
                        task,
                        attempt: *attempt,
                        outcome: outcome.clone(),
                    }),
                    None => warn!(run = %id, task, "observation for a task the run does not have"),
                },
                Work::Flush => {}
            }
        }
        // Every event applied in this call, replayed on a fresh record after a conflict.
        let mut applied: Vec<Event> = Vec::new();
        // Commands carried out in this call (they leave the outbox).
        let mut executed: Vec<Command> = Vec::new();
        let mut launched: HashMap<(u32, u32), String> = HashMap::new();
        let mut conflicts = 0;
        for _ in 0..MAX_PASSES {
            let scheduler = StageScheduler::restore(Arc::clone(&plan), record.scheduler.clone())
                .map_err(|e| Error::corrupt(format!("run {id}"), e))?;
            let (next, timers) = self.transition(&record, scheduler, &events, &launched);
            let outbox_empty = next.outbox.is_empty();
            let commit = Commit {
                expected_version: record.version,
                record: next.clone(),
                enqueue: timers,
                ack: if outbox_empty {
                    tokens.clone()
                } else {
                    Vec::new()
                },
            };
            match self.store.commit(commit).await {
                Ok(()) => {
                    applied.append(&mut events);
                    if next.state.is_finished() && !record.state.is_finished() {
                        info!(run = %id, state = next.state.as_str(), "run finished");
                        self.plans.forget(id);
                    }
                    self.listener.committed(&record, &next);
                    record = next;
                    // A record per commit is costly for big runs: only when someone listens.
                    if self.updates.receiver_count() > 0 {
                        let _ = self.updates.send(Arc::new(record.clone()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Conflict && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    self.listener.conflict();
                    debug!(run = %id, conflicts, "commit conflict; reloading");
                    record = self.store.load_run(id).await?;
                    record.outbox.retain(|c| !executed.contains(c));
                    let mut replay = applied.clone();
                    replay.append(&mut events);
                    events = replay;
                    applied.clear();
                    continue;
                }
                Err(e) => return Err(e),
            }
            if outbox_empty {
                return Ok(());
            }
            // Carry out the outbox; what could not be done stays in it.
            let outbox = std::mem::take(&mut record.outbox);
            let mut remaining = Vec::new();
            for command in outbox {
                match self.execute(id, &plan, record.created_ms, &command).await {
                    Ok(Some(result)) => {
                        events.push(result.event);
                        if let Some(handle) = result.handle
                            && let Command::Launch { task, attempt } = command
                        {
                            launched.insert((task, attempt), handle);
                        }
                        executed.push(command);
                    }
                    Ok(None) => executed.push(command),
                    Err(e) => {
                        warn!(run = %id, error = %e, ?command, "backend unavailable; will retry");
                        remaining.push(command);
                    }
                }
            }
            record.outbox = remaining;
            if events.is_empty() && !record.outbox.is_empty() {
                // Nothing could be done now: keep the outbox and come back later.
                let retry_at = self.clock.now_ms().saturating_add(2_000);
                let mut next = record.clone();
                next.version += 1;
                let commit = Commit {
                    expected_version: record.version,
                    record: next,
                    enqueue: vec![WorkItem {
                        run: id.clone(),
                        work: Work::Flush,
                        due_ms: Some(retry_at),
                    }],
                    ack: tokens.clone(),
                };
                return self.store.commit(commit).await;
            }
        }
        Err(Error::unavailable(
            "engine",
            format!("run {id} did not settle"),
        ))
    }

    /// Applies `events` to `record` and returns the new record and the timers to enqueue.
    fn transition(
        &self,
        record: &RunRecord,
        mut scheduler: StageScheduler,
        events: &[Event],
        launched: &HashMap<(u32, u32), String>,
    ) -> (RunRecord, Vec<WorkItem>) {
        let now = self.clock.now_ms();
        let mut commands = Vec::new();
        for e in events {
            scheduler.handle_into(e.clone(), &mut commands);
        }
        let mut next = record.clone();
        next.version = record.version + 1;
        next.updated_ms = now;
        let mut timers = Vec::new();
        for c in commands {
            match c {
                Command::ScheduleTimer { timer, after } => timers.push(WorkItem {
                    run: record.id.clone(),
                    work: Work::Event {
                        event: Event::TimerFired { timer },
                    },
                    due_ms: Some(crate::limits::due_ms(now, after)),
                }),
                Command::Launch { task, attempt } => {
                    let t = &mut next.timings[task as usize];
                    let round = scheduler.state().epoch();
                    // The first launch of a rerun starts the task's clock again.
                    if t.attempts.last().is_some_and(|a| a.round != round) {
                        t.first_launch_ms = None;
                    }
                    t.launch_ms = Some(now);
                    t.first_launch_ms.get_or_insert(now);
                    t.attempts.push(AttemptTiming {
                        number: attempt,
                        round,
                        launch_ms: now,
                        ..AttemptTiming::default()
                    });
                    next.outbox.push(c);
                }
                Command::Cancel { .. } => next.outbox.push(c),
                Command::Complete { .. } => {}
            }
        }
        for ((task, attempt), handle) in launched {
            let timing = &mut next.timings[*task as usize];
            if scheduler.state().tasks()[*task as usize].attempt == *attempt {
                timing.handle = Some(handle.clone());
            }
            if let Some(a) = timing
                .attempts
                .iter_mut()
                .rev()
                .find(|a| a.number == *attempt)
            {
                a.handle = Some(handle.clone());
            }
        }
        refresh_timings(&mut next.timings, scheduler.state(), now);
        next.scheduler = scheduler.into_state();
        next.state = RunState::of(&next.scheduler);
        if next.state.is_finished() {
            next.finished_ms.get_or_insert(now);
        } else {
            next.finished_ms = None;
        }
        (next, timers)
    }

    /// Carries out one command; `Ok(None)` when there is nothing to report,
    /// `Err` only for errors worth retrying later.
    async fn execute(
        &self,
        id: &RunId,
        plan: &Plan,
        created_ms: u64,
        command: &Command,
    ) -> Result<Option<Executed>> {
        match *command {
            Command::Launch { task, attempt } => {
                let mut request = LaunchRequest::for_task(id, plan, task, attempt);
                request.run.created_ms = created_ms;
                let launch = || async {
                    let r = self.backend.launch(request.clone()).await;
                    if let Err(e) = &r {
                        self.listener.backend_error("launch", e);
                    }
                    r
                };
                match retry(launch).await {
                    Ok(l) => Ok(Some(Executed {
                        event: Event::TaskStarted { task, attempt },
                        handle: Some(l.handle),
                    })),
                    Err(e) if e.is_retryable() => Err(e),
                    Err(e) => {
                        warn!(run = %id, task = plan.task(task).name(), attempt, error = %e, "launch failed");
                        Ok(Some(Executed {
                            event: Event::TaskFinished {
                                task,
                                attempt,
                                outcome: AttemptOutcome::Failed {
                                    message: format!("launch failed: {e}"),
                                },
                            },
                            handle: None,
                        }))
                    }
                }
            }
            Command::Cancel { task, attempt } => {
                let key = LaunchKey {
                    run: id.clone(),
                    task: plan.task(task).name().to_string(),
                    attempt,
                };
                let cancel = || async {
                    let r = self.backend.cancel(&key).await;
                    if let Err(e) = &r {
                        self.listener.backend_error("cancel", e);
                    }
                    r
                };
                match retry(cancel).await {
                    Ok(()) => Ok(None),
                    Err(e) if e.is_retryable() => Err(e),
                    Err(e) => {
                        warn!(%key, error = %e, "cancel failed; giving up on it");
                        Ok(None)
                    }
                }
            }
            Command::ScheduleTimer { .. } | Command::Complete { .. } => Ok(None),
        }
    }

    /// Feeds the backend's observations into the store's queue.
    async fn forward_observations(
        self: Arc<Self>,
        observations: futures::stream::BoxStream<'static, Observation>,
    ) {
        let mut stream = observations.ready_chunks(256);
        while let Some(chunk) = stream.next().await {
            let items: Vec<WorkItem> = chunk.into_iter().map(observed).collect();
            let mut backoff = Backoff::default();
            while let Err(e) = self.store.enqueue(items.clone()).await {
                self.listener.store_error("enqueue", &e);
                warn!(error = %e, "cannot record observations; retrying");
                backoff.wait().await;
            }
        }
    }

    /// After a restart: feed what the backend already finished for running runs.
    async fn reconcile_running(&self) {
        let mut filter = RunFilter {
            states: vec![RunState::Running],
            limit: 500,
            ..RunFilter::default()
        };
        loop {
            let page = match self.store.list_runs(&filter).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot list running runs to reconcile");
                    return;
                }
            };
            for run in &page.runs {
                match self.backend.reconcile(&run.id).await {
                    Ok(found) if !found.is_empty() => {
                        let items = found.into_iter().map(observed).collect();
                        if let Err(e) = self.store.enqueue(items).await {
                            warn!(run = %run.id, error = %e, "cannot record reconciled outcomes");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(run = %run.id, error = %e, "cannot reconcile run with the backend")
                    }
                }
                // Flush so outboxes of interrupted transitions are carried out.
                let _ = self
                    .store
                    .enqueue(vec![WorkItem::now(run.id.clone(), Work::Flush)])
                    .await;
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return,
            }
        }
    }

    async fn chores(self: Arc<Self>) {
        let purge_every = self.config.purge_every;
        let housekeeping = self.config.housekeeping;
        let tick = [purge_every, housekeeping.map(|h| h.every)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(3600));
        let mut last_purge = tokio::time::Instant::now();
        let mut last_house = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            if let Some(every) = purge_every
                && last_purge.elapsed() >= every
            {
                last_purge = tokio::time::Instant::now();
                match self.store.purge_expired(self.clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => info!(runs = n, "purged expired runs"),
                    Err(e) => warn!(error = %e, "purging expired runs failed"),
                }
            }
            if let Some(policy) = housekeeping
                && last_house.elapsed() >= policy.every
            {
                last_house = tokio::time::Instant::now();
                let policy = policy.at(self.clock.now_ms());
                match self.backend.housekeeping(&policy).await {
                    Ok(r) if !r.deleted.is_empty() => {
                        info!(deleted = r.deleted.len(), "backend housekeeping")
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "backend housekeeping failed"),
                }
            }
        }
    }

    /// Waits until run `id` has finished and returns its record. Uses this
    /// engine's updates, and reloads from the store when it may have missed some.
    ///
    /// Needs this engine's run loop ([`Engine::spawn`] or [`Engine::run`]):
    /// with none running, nothing would ever finish the run, so instead of
    /// waiting forever it fails after about a second. (To wait for runs that
    /// *other* engines drive, poll [`Store::load_run`].)
    ///
    /// # Errors
    /// Store errors (e.g. [`Error::NotFound`]); [`Error::Unsupported`] when
    /// the run is unfinished and no run loop of this engine is running.
    pub async fn wait_finished(&self, id: &RunId) -> Result<RunRecord> {
        let mut rx = self.subscribe();
        // One check may come before a freshly spawned `run` was first polled:
        // only two in a row, a second apart, mean that no loop runs.
        let mut no_loop_seen = false;
        loop {
            let record = self.store.load_run(id).await?;
            if record.state.is_finished() {
                return Ok(record);
            }
            if self.loops.load(Ordering::SeqCst) == 0 {
                if no_loop_seen {
                    return Err(Error::Unsupported {
                        message: format!(
                            "Engine::wait_finished: run {id} is {} and no run loop of this engine is running, so it would never finish; start one with Engine::spawn or Engine::run first",
                            record.state.as_str()
                        ),
                    });
                }
                no_loop_seen = true;
            } else {
                no_loop_seen = false;
            }
            loop {
                match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    Ok(Ok(r)) if r.id == *id && r.state.is_finished() => return Ok((*r).clone()),
                    Ok(Ok(_)) => continue,
                    // Lagged, closed or quiet for a while: reload.
                    _ => break,
                }
            }
        }
    }
}

/// The work item that records an observation.
fn observed(o: Observation) -> WorkItem {
    WorkItem::now(
        o.key.run,
        Work::Observed {
            task: o.key.task,
            attempt: o.key.attempt,
            outcome: o.outcome,
        },
    )
}

struct Executed {
    event: Event,
    handle: Option<String>,
}

/// Brings each task's times in line with its new state: the end of the
/// task and of each attempt that is over, with its status and reason. A task
/// waiting again (a rerun) forgets its launch times, so that its duration is
/// that of the new round (its earlier attempts stay in `attempts`).
fn refresh_timings(timings: &mut [TaskTiming], state: &SchedulerState, now: u64) {
    for (t, s) in timings.iter_mut().zip(state.tasks()) {
        let terminal = s.status.is_terminal();
        if terminal && t.finished_ms.is_none() {
            t.finished_ms = Some(now);
        } else if !terminal && t.finished_ms.is_some() {
            t.finished_ms = None;
        }
        if s.status == TaskStatus::Waiting {
            t.launch_ms = None;
            t.first_launch_ms = None;
        }
        for a in t.attempts.iter_mut().filter(|a| a.finished_ms.is_none()) {
            let current = a.number == s.attempt;
            if current && s.status == TaskStatus::Running {
                continue;
            }
            a.finished_ms = Some(now);
            // An attempt followed by a newer one failed (it was retried).
            a.status = Some(if current {
                s.status
            } else {
                TaskStatus::Failed
            });
            a.message = if current || s.status == TaskStatus::Backoff {
                s.message.clone()
            } else {
                None
            };
        }
    }
}

/// Calls `f` up to [`BACKEND_TRIES`] times while it fails with a retryable error.
async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        tries += 1;
        match f().await {
            Err(e) if e.is_retryable() && tries < BACKEND_TRIES => {
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            other => return other,
        }
    }
}

/// Exponential backoff for outages: 100 ms doubling to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

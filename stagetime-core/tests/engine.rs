#![cfg(feature = "test-util")]
//! Engine tests: `MemoryStore` + `InstantBackend` with tokio's paused time
//! for timers, and `mockall` mocks of `Backend` and `Store` that inject faults.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::executor::block_on;
use futures::stream::BoxStream;
use mockall::mock;
use stagetime_core::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingPolicy, HousekeepingReport, LaunchKey,
    LaunchRequest, Launched, Observation,
};
use stagetime_core::engine::{Engine, EngineConfig, TokioClock};
use stagetime_core::memory::MemoryStore;
use stagetime_core::scheduler::{AttemptOutcome, StopReason, TaskStatus};
use stagetime_core::spec::RevisionRunSpec;
use stagetime_core::store::{
    ClaimToken, Claimed, Commit, Created, Delivery, RunFilter, RunId, RunPage, RunRecord, RunState,
    Store, WorkItem,
};
use stagetime_core::testkit::{ClaimGate, GatedStore, InstantBackend};
use stagetime_core::{Error, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn config() -> EngineConfig {
    EngineConfig {
        consumer: "engine-test".into(),
        batch: 64,
        claim_wait: Duration::from_millis(200),
        purge_every: None,
        housekeeping: None,
        reconcile_on_start: false,
        ..EngineConfig::default()
    }
}

/// An engine running in the background until `shutdown`.
struct Running {
    engine: Arc<Engine>,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<()>>,
}

/// An engine with the test [`config`] on tokio's (paused) clock.
fn engine(store: Arc<dyn Store>, backend: Arc<dyn Backend>) -> Engine {
    Engine::new(store, backend)
        .with_config(config())
        .with_clock(Arc::new(TokioClock::new()))
}

fn start(store: Arc<dyn Store>, backend: Arc<dyn Backend>) -> Running {
    run(engine(store, backend))
}

/// Runs `engine` in the background.
fn run(engine: Engine) -> Running {
    let engine = Arc::new(engine);
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = rx.await;
    }));
    Running {
        engine,
        stop,
        handle,
    }
}

impl Running {
    /// Submits the spec of the YAML `text`; its run id.
    async fn submit(&self, text: &str) -> RunId {
        self.engine.submit(yaml(text)).await.unwrap().id
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }

    /// Waits until run `id` is in `state` (e.g. after a rerun).
    async fn wait_state(&self, id: &RunId, state: RunState) -> RunRecord {
        let mut updates = self.engine.subscribe();
        loop {
            let record = self.engine.store().load_run(id).await.unwrap();
            if record.state == state {
                return record;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), updates.recv()).await;
        }
    }
}

fn yaml(text: &str) -> RevisionRunSpec {
    yaml_serde::from_str(text).unwrap()
}

fn key(id: &RunId, task: &str, attempt: u32) -> LaunchKey {
    LaunchKey {
        run: id.clone(),
        task: task.into(),
        attempt,
    }
}

fn status(record: &RunRecord, i: usize) -> TaskStatus {
    record.scheduler.tasks()[i].status
}

/// Asserts that exactly `keys` were started, each once.
fn assert_created_once(backend: &InstantBackend, id: &RunId, keys: &[(&str, u32)]) {
    let expected: HashMap<LaunchKey, u32> = keys.iter().map(|(t, a)| (key(id, t, *a), 1)).collect();
    assert_eq!(backend.created(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_run_goes_through_its_stages_and_launches_each_attempt_once() {
    let backend = InstantBackend::new();
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: 'true'}, {name: b, command: 'true'},
              {name: c, stage: 1, command: 'true'}], finally: [{name: f, command: 'true'}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert_created_once(&backend, &id, &[("a", 1), ("b", 1), ("c", 1), ("f", 1)]);
    // Stage 1 was launched after stage 0 had finished.
    let t = &record.timings;
    assert!(t[2].launch_ms.unwrap() >= t[0].finished_ms.unwrap());
    assert!(t.iter().all(|t| t.handle.is_some()));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_delay_is_waited_for_between_attempts() {
    let launches: Arc<Mutex<Vec<(u32, tokio::time::Instant)>>> = Arc::default();
    let seen = Arc::clone(&launches);
    let backend = InstantBackend::with(move |r| {
        seen.lock()
            .unwrap()
            .push((r.key.attempt, tokio::time::Instant::now()));
        Some(if r.key.attempt < 3 {
            AttemptOutcome::Failed {
                message: "exit 1".into(),
            }
        } else {
            AttemptOutcome::Succeeded
        })
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: t, retries: 2, retry_delay: 10s, command: x}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert_created_once(&backend, &id, &[("t", 1), ("t", 2), ("t", 3)]);
    let l = launches.lock().unwrap().clone();
    assert_eq!(l.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3]);
    // Virtual time: the doubling, jittered backoff was honoured.
    for (gap, nominal) in [(l[1].1 - l[0].1, 10), (l[2].1 - l[1].1, 20)] {
        let d = Duration::from_secs(nominal);
        assert!(
            gap >= d.mul_f64(0.9) && gap <= d + Duration::from_secs(1),
            "gap {gap:?} for a nominal {d:?}"
        );
    }
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lost_attempts_are_retried_without_the_tasks_retries_and_shown_in_the_view() {
    // `a` is lost twice (the default budget) and then succeeds; `b`, with
    // the budget set to 0, is lost once and fails. Neither has retries.
    let backend = InstantBackend::with(|r| {
        Some(if r.key.attempt < 3 {
            AttemptOutcome::Lost {
                message: format!("lost: its worker died (attempt {})", r.key.attempt),
            }
        } else {
            AttemptOutcome::Succeeded
        })
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit("{repo: r, commit: c, tasks: [{name: a, command: x}]}")
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert_created_once(&backend, &id, &[("a", 1), ("a", 2), ("a", 3)]);
    let plan = stagetime_core::plan::Plan::build(record.spec.clone()).unwrap();
    let view = stagetime_core::view::RunView::build(&record, &plan).unwrap();
    let a = &view.tasks[0];
    assert_eq!((a.attempt, a.lost), (3, 2));
    assert_eq!(
        a.lost_reason.as_deref(),
        Some("lost: its worker died (attempt 2)")
    );
    let id = running
        .submit("{repo: r, commit: d, options: {lost_retries: 0}, tasks: [{name: b, command: x}]}")
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    let b: Vec<LaunchKey> = backend
        .created()
        .into_keys()
        .filter(|k| k.run == id)
        .collect();
    assert_eq!(b, [key(&id, "b", 1)], "no budget: not relaunched");
    let message = record.scheduler.tasks()[0].message.clone().unwrap();
    assert!(message.contains("its worker died"), "{message}");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn hanging_task_times_out_is_cancelled_and_retried() {
    let backend = InstantBackend::new();
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let began = tokio::time::Instant::now();
    let id = running.submit("{repo: r, commit: c, tasks: [{name: t, retries: 1, timeout: 30s, command: sleep 100}]}").await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert_eq!(status(&record, 0), TaskStatus::TimedOut);
    let message = record.scheduler.tasks()[0].message.clone().unwrap();
    assert!(message.contains("timed out"), "{message}");
    assert_created_once(&backend, &id, &[("t", 1), ("t", 2)]);
    // Two attempts of 30 s each (virtual time).
    assert!(began.elapsed() >= Duration::from_secs(60));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn run_timeout_cancels_running_skips_pending_and_runs_finally() {
    let backend = InstantBackend::new();
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, options: {timeout: 1m},
              tasks: [{name: a, command: sleep 100}, {name: b, stage: 1, command: 'true'}],
              finally: [{name: f, command: 'true'}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert_eq!(record.scheduler.stop_reason(), Some(StopReason::Timeout));
    assert_eq!(status(&record, 0), TaskStatus::Cancelled);
    assert_eq!(status(&record, 1), TaskStatus::Skipped);
    assert_eq!(status(&record, 2), TaskStatus::Succeeded);
    assert_created_once(&backend, &id, &[("a", 1), ("f", 1)]);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_through_the_engine_ends_the_run_cancelled() {
    let backend = InstantBackend::new();
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: sleep 100}],
              finally: [{name: f, command: 'true'}]}",
        )
        .await;
    running.wait_state(&id, RunState::Running).await;
    while backend.total_created() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.engine.cancel(&id).await.unwrap();
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Cancelled);
    assert_eq!(status(&record, 0), TaskStatus::Cancelled);
    assert_eq!(status(&record, 1), TaskStatus::Succeeded);
    assert_created_once(&backend, &id, &[("a", 1), ("f", 1)]);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rerun_through_the_engine_keeps_succeeded_tasks() {
    let backend = InstantBackend::with(|r| {
        Some(if r.key.task == "b" && r.key.attempt == 1 {
            AttemptOutcome::Failed {
                message: "flaky".into(),
            }
        } else {
            AttemptOutcome::Succeeded
        })
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, command: x},
              {name: c, stage: 1, command: x}]}",
        )
        .await;
    let first = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(first.state, RunState::Failed);
    running.engine.rerun(&id).await.unwrap();
    let second = running.wait_state(&id, RunState::Succeeded).await;
    assert_eq!(status(&second, 2), TaskStatus::Succeeded);
    assert_created_once(&backend, &id, &[("a", 1), ("b", 1), ("b", 2), ("c", 1)]);
    running.shutdown().await;
}

/// Issue 14: every attempt is recorded with its times, how it ended and why;
/// after a rerun the run's and the rerun task's durations are those of the
/// new round, not stretched over the hour between the rounds.
#[tokio::test(start_paused = true)]
async fn attempts_are_recorded_with_reasons_and_a_rerun_restarts_the_clocks() {
    let backend = InstantBackend::with(|r| {
        Some(match (r.key.task.as_str(), r.key.attempt) {
            ("a", 1) => AttemptOutcome::Failed {
                message: "flaky".into(),
            },
            ("b", 1) => AttemptOutcome::Failed {
                message: "broken".into(),
            },
            _ => AttemptOutcome::Succeeded,
        })
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: x, retries: 1, retry_delay: 2s},
              {name: b, stage: 1, command: x}]}",
        )
        .await;
    let first = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(first.state, RunState::Failed);
    let view = running.engine.plans().view(&first).unwrap();
    let a = view.task("a").unwrap();
    let how: Vec<_> = a
        .timing
        .attempts
        .iter()
        .map(|x| (x.number, x.status, x.message.as_deref()))
        .collect();
    assert_eq!(
        how,
        [
            (1, Some(TaskStatus::Backoff), Some("flaky")),
            (2, Some(TaskStatus::Succeeded), None),
        ]
    );
    assert!(a.timing.attempts.iter().all(|x| x.finished_ms.is_some()));
    assert!(
        a.timing.attempts[1].launch_ms > a.timing.attempts[0].finished_ms.unwrap() + 1_000,
        "the second attempt waited out the (jittered) retry delay: {:?}",
        a.timing.attempts
    );
    assert_eq!(
        view.queue_ms(u64::MAX),
        Some(view.started_ms().unwrap() - view.created_ms)
    );

    tokio::time::sleep(Duration::from_secs(3600)).await;
    running.engine.rerun(&id).await.unwrap();
    let second = running.wait_state(&id, RunState::Succeeded).await;
    let view = running.engine.plans().view(&second).unwrap();
    assert_eq!(view.round(), 1);
    let b = view.task("b").unwrap();
    let rounds: Vec<_> = b
        .timing
        .attempts
        .iter()
        .map(|x| (x.number, x.round, x.status))
        .collect();
    assert_eq!(
        rounds,
        [
            (1, 0, Some(TaskStatus::Failed)),
            (2, 1, Some(TaskStatus::Succeeded))
        ]
    );
    let now = second.finished_ms.unwrap();
    assert!(
        b.duration_ms(now).unwrap() < 3_600_000,
        "b's duration is that of its rerun: {:?}",
        b.timing
    );
    assert!(
        view.duration_ms(now) < 3_600_000,
        "the run is not charged the hour between the rounds: {}",
        view.duration_ms(now)
    );
    assert_eq!(view.queue_ms(now), None, "a rerun's wait is not recorded");
    running.shutdown().await;
}

// ---------------------------------------------------------------- mocks

mock! {
    FaultyBackend {}
    #[async_trait]
    impl Backend for FaultyBackend {
        fn name(&self) -> &str;
        fn capabilities(&self) -> Capabilities;
        async fn launch(&self, request: LaunchRequest) -> Result<Launched>;
        async fn cancel(&self, key: &LaunchKey) -> Result<()>;
        fn observe(&self) -> BoxStream<'static, Observation>;
        async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>>;
        async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport>;
    }
}

/// A mock backend that answers `launch` with `fault(call number)` or, when
/// that is `None`, by delegating to `inner`; everything else delegates.
fn faulty_backend(
    inner: InstantBackend,
    calls: Arc<AtomicU32>,
    fault: impl Fn(u32) -> Option<Error> + Send + Sync + 'static,
) -> MockFaultyBackend {
    let mut mock = MockFaultyBackend::new();
    mock.expect_name().return_const("faulty".to_string());
    mock.expect_capabilities().return_const(Capabilities {
        commands: true,
        pipelines: true,
        custom: false,
    });
    let i = inner.clone();
    mock.expect_observe().returning(move || i.observe());
    let i = inner.clone();
    mock.expect_launch().returning(move |request| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        match fault(n) {
            Some(e) => Err(e),
            // InstantBackend::launch never waits.
            None => block_on(i.launch(request)),
        }
    });
    let i = inner.clone();
    mock.expect_cancel()
        .returning(move |key| block_on(i.cancel(key)));
    let i = inner.clone();
    mock.expect_reconcile()
        .returning(move |run| block_on(i.reconcile(run)));
    mock.expect_housekeeping()
        .returning(|_| Ok(HousekeepingReport::default()));
    mock
}

#[tokio::test(start_paused = true)]
async fn launch_unavailable_then_available_runs_the_task_once() {
    let inner = InstantBackend::new();
    let calls = Arc::new(AtomicU32::new(0));
    // More failures than one round of the engine's backend retries, so the
    // launch also goes back to the queue once.
    let backend = faulty_backend(inner.clone(), Arc::clone(&calls), |n| {
        (n <= 5).then(|| Error::unavailable("cluster", "connection refused"))
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend));
    let id = running
        .submit("{repo: r, commit: c, tasks: [{name: a, command: 'true'}]}")
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_created_once(&inner, &id, &[("a", 1)]);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_processing_a_run_quarantines_it_and_the_engine_lives_on() {
    // A panic while applying work (here: in the backend) must neither take
    // the engine down nor come back with the work to crash the next engine.
    let backend = faulty_backend(InstantBackend::new(), Arc::new(AtomicU32::new(0)), |_| {
        panic!("a bug in the backend")
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend));
    let id = running
        .submit("{repo: r, commit: c, tasks: [{name: a, command: 'true'}]}")
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    let message = record.scheduler.tasks()[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("internal error") && message.contains("a bug in the backend"),
        "{message}"
    );
    assert!(!running.handle.is_finished(), "the engine still runs");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn launch_refused_for_good_fails_the_task_without_retrying_the_call() {
    let inner = InstantBackend::new();
    let calls = Arc::new(AtomicU32::new(0));
    let backend = faulty_backend(inner.clone(), Arc::clone(&calls), |_| {
        Some(Error::Unsupported {
            message: "no such pipeline".into(),
        })
    });
    let running = start(Arc::new(MemoryStore::new()), Arc::new(backend));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, stage: 1, command: x}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert_eq!(status(&record, 0), TaskStatus::Failed);
    let message = record.scheduler.tasks()[0].message.clone().unwrap();
    assert!(message.contains("launch failed"), "{message}");
    assert!(message.contains("no such pipeline"), "{message}");
    assert_eq!(status(&record, 1), TaskStatus::Skipped);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a permanent error is not retried"
    );
    assert!(inner.created().is_empty());
    running.shutdown().await;
}

mock! {
    FaultyStore {}
    #[async_trait]
    impl Store for FaultyStore {
        async fn create_run(&self, record: RunRecord, start: Vec<WorkItem>) -> Result<Created>;
        async fn load_run(&self, id: &RunId) -> Result<RunRecord>;
        async fn commit(&self, commit: Commit) -> Result<()>;
        async fn enqueue(&self, items: Vec<WorkItem>) -> Result<()>;
        async fn claim(
            &self,
            consumer: &str,
            max: usize,
            now_ms: u64,
            wait: Duration,
        ) -> Result<Vec<Claimed>>;
        async fn ack(&self, tokens: &[ClaimToken]) -> Result<()>;
        async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage>;
        async fn purge_expired(&self, now_ms: u64) -> Result<u64>;
        async fn record_delivery(&self, delivery: Delivery, ttl: Duration) -> Result<bool>;
        async fn pending_deliveries(&self, max: usize) -> Result<Vec<Delivery>>;
        async fn settle_delivery(&self, delivery: Delivery) -> Result<()>;
        async fn list_deliveries(&self, max: usize) -> Result<Vec<Delivery>>;
    }
}

/// Claim faults decided by the mock: the claim goes on to the real store only
/// when the mock answers `Ok`. (The mock cannot delegate itself: its answers
/// are synchronous, and `MemoryStore::claim` waits asynchronously for work.)
#[async_trait]
impl ClaimGate for MockFaultyStore {
    async fn before_claim(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<()> {
        Store::claim(self, consumer, max, now_ms, wait)
            .await
            .map(drop)
    }
}

#[tokio::test(start_paused = true)]
async fn claim_failures_do_not_stop_the_engine() {
    let claims = Arc::new(AtomicU32::new(0));
    let mut faults = MockFaultyStore::new();
    let counter = Arc::clone(&claims);
    faults.expect_claim().returning(move |_, _, _, _| {
        if counter.fetch_add(1, Ordering::SeqCst) < 3 {
            Err(Error::unavailable("store", "connection reset"))
        } else {
            Ok(Vec::new())
        }
    });
    let store = GatedStore {
        gate: faults,
        inner: Arc::new(MemoryStore::new()),
    };
    let backend = InstantBackend::new();
    let running = start(Arc::new(store), Arc::new(backend.clone()));
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, stage: 1, command: x}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert!(claims.load(Ordering::SeqCst) > 3);
    assert_created_once(&backend, &id, &[("a", 1), ("b", 1)]);
    running.shutdown().await;
}

/// Delegates to an `InstantBackend`, but `launch` waits for `gate` (after
/// signalling `entered`), so a test can stop the engine mid-batch.
struct GatedBackend {
    inner: InstantBackend,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Backend for GatedBackend {
    fn name(&self) -> &str {
        "gated"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        self.entered.notify_one();
        self.gate.notified().await;
        self.inner.launch(request).await
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        self.inner.cancel(key).await
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        self.inner.observe()
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        self.inner.reconcile(run).await
    }

    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        self.inner.housekeeping(policy).await
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_batch_in_hand_and_leaves_nothing_claimed() {
    let inner = InstantBackend::new();
    let entered = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    let backend = GatedBackend {
        inner: inner.clone(),
        entered: Arc::clone(&entered),
        gate: Arc::clone(&gate),
    };
    let store = Arc::new(MemoryStore::new());
    let running = start(store.clone(), Arc::new(backend));
    let id = running
        .submit("{repo: r, commit: c, tasks: [{name: a, command: 'sleep 1'}]}")
        .await;
    // The batch is in the middle of launching `a`: ask the engine to stop.
    entered.notified().await;
    let _ = running.stop.send(());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !running.handle.is_finished(),
        "the engine waits for the batch in hand"
    );
    gate.notify_one();
    running.handle.await.unwrap().unwrap();
    let record = store.load_run(&id).await.unwrap();
    assert_eq!(
        status(&record, 0),
        TaskStatus::Running,
        "the launch was committed"
    );
    assert!(record.outbox.is_empty(), "{:?}", record.outbox);
    let stats = store.stats(u64::MAX / 2).await.unwrap().unwrap();
    assert_eq!(
        stats.queue.in_flight, 0,
        "the batch was acknowledged: {stats:?}"
    );
    assert_created_once(&inner, &id, &[("a", 1)]);
}

/// Counts what an engine reports to its listener.
#[derive(Default)]
struct Counting {
    committed: AtomicU32,
    finished: AtomicU32,
    backend_errors: AtomicU32,
}

impl stagetime_core::engine::EngineListener for Counting {
    fn committed(&self, before: &RunRecord, after: &RunRecord) {
        self.committed.fetch_add(1, Ordering::SeqCst);
        assert_eq!(after.version, before.version + 1);
        if after.state.is_finished() && !before.state.is_finished() {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn backend_error(&self, op: &'static str, _error: &Error) {
        assert_eq!(op, "launch");
        self.backend_errors.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_listener_sees_transitions_finishes_and_backend_errors() {
    let inner = InstantBackend::new();
    let calls = Arc::new(AtomicU32::new(0));
    let backend = faulty_backend(inner.clone(), Arc::clone(&calls), |n| {
        (n <= 2).then(|| Error::unavailable("cluster", "connection refused"))
    });
    let listener = Arc::new(Counting::default());
    let running = run(
        engine(Arc::new(MemoryStore::new()), Arc::new(backend)).with_listener(listener.clone())
    );
    let id = running
        .submit(
            "{repo: r, commit: c, tasks: [{name: a, command: 'true'}, {name: b, stage: 1, command: 'true'}]}",
        )
        .await;
    let record = running.engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    running.shutdown().await;
    assert!(listener.committed.load(Ordering::SeqCst) >= 3);
    assert_eq!(listener.finished.load(Ordering::SeqCst), 1);
    assert_eq!(listener.backend_errors.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn housekeeping_runs_every_period_with_the_policy_ttl_and_keep_last() {
    let passes: Arc<Mutex<Vec<Housekeeping>>> = Arc::default();
    let mut backend = MockFaultyBackend::new();
    let inner = InstantBackend::new();
    backend.expect_name().return_const("recording".to_string());
    backend.expect_capabilities().return_const(Capabilities {
        commands: true,
        pipelines: true,
        custom: false,
    });
    backend.expect_observe().returning(move || inner.observe());
    backend.expect_reconcile().returning(|_| Ok(Vec::new()));
    let seen = Arc::clone(&passes);
    backend.expect_housekeeping().returning(move |policy| {
        seen.lock().unwrap().push(*policy);
        Ok(HousekeepingReport::default())
    });
    let clock = Arc::new(TokioClock::new());
    let policy = HousekeepingPolicy {
        every: Duration::from_secs(3600),
        ttl: Duration::from_secs(7 * 86_400),
        keep_last: 5,
    };
    let running = run(Engine::new(Arc::new(MemoryStore::new()), Arc::new(backend))
        .with_config(EngineConfig {
            housekeeping: Some(policy),
            ..config()
        })
        .with_clock(clock.clone()));
    // Paused time: the sleep advances the clock past two periods at once.
    tokio::time::sleep(Duration::from_secs(2 * 3600 + 60)).await;
    running.shutdown().await;
    let passes = passes.lock().unwrap().clone();
    assert_eq!(passes.len(), 2, "{passes:?}");
    for pass in &passes {
        assert_eq!((pass.ttl, pass.keep_last), (policy.ttl, policy.keep_last));
    }
    assert!(
        passes[1].now_ms - passes[0].now_ms >= 3_600_000,
        "{passes:?}"
    );
    assert_eq!(policy.at(42).now_ms, 42);
}

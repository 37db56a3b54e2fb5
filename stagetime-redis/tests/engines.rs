//! Engines of stagetime-core driving runs through RedisStore on a real
//! redis-server: several engines at once, a worker process killed with
//! SIGKILL, Redis restarted mid-run, and malformed data in Redis.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagetime_core::backend::Backend;
use stagetime_core::engine::{Engine, EngineConfig};
use stagetime_core::store::{RunFilter, RunId, RunState, Store};
use stagetime_core::testkit::{InstantBackend, command_task};
use stagetime_core::{ErrorKind, RevisionRunSpec};
use stagetime_redis::{RedisConfig, RedisStore};
use tokio::sync::watch;

fn spec(i: usize, stages: u32, per_stage: u32) -> RevisionRunSpec {
    let mut tasks = Vec::new();
    for s in 0..stages {
        for t in 0..per_stage {
            tasks.push(command_task(&format!("s{s}-t{t}"), s, "true"));
        }
    }
    RevisionRunSpec {
        repo: "fleet".into(),
        commit: format!("c{i:04}"),
        tasks,
        ..RevisionRunSpec::default()
    }
}

fn engine_config(consumer: &str) -> EngineConfig {
    EngineConfig {
        consumer: consumer.to_string(),
        batch: 64,
        claim_wait: Duration::from_millis(200),
        purge_every: None,
        housekeeping: None,
        reconcile_on_start: false,
        ..EngineConfig::default()
    }
}

fn finished_filter() -> RunFilter {
    RunFilter {
        states: vec![RunState::Succeeded, RunState::Failed, RunState::Cancelled],
        limit: 1000,
        ..RunFilter::default()
    }
}

/// Waits until `n` runs have finished; panics after `timeout`.
async fn wait_finished(store: &dyn Store, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match store.list_runs(&finished_filter()).await {
            Ok(page) if page.runs.len() >= n => return,
            Ok(page) => assert!(
                Instant::now() < deadline,
                "only {} of {n} runs finished within {timeout:?}",
                page.runs.len()
            ),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                assert!(
                    Instant::now() < deadline,
                    "store unavailable until the deadline: {e}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits seen by an engine: (run, version, state, finished_ms).
type Seen = Arc<Mutex<Vec<(RunId, u64, RunState, Option<u64>)>>>;

fn record_commits(engine: &Engine, lagged: Arc<Mutex<bool>>) -> Seen {
    let seen: Seen = Arc::default();
    let mut rx = engine.subscribe();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(r) => {
                    out.lock()
                        .unwrap()
                        .push((r.id.clone(), r.version, r.state, r.finished_ms))
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    *lagged.lock().unwrap() = true
                }
                Err(_) => return,
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_engines_complete_every_run_once_and_launch_every_attempt_once() {
    let Some(server) = support::shared() else {
        return;
    };
    let config = server
        .config("fleet")
        .with_reclaim_after(Duration::from_secs(3));
    let backend = InstantBackend::new();
    let mut engines = Vec::new();
    let lagged = Arc::new(Mutex::new(false));
    let mut seen = Vec::new();
    for i in 0..3 {
        let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
        let engine = Arc::new(
            Engine::new(store, Arc::new(backend.clone()) as Arc<dyn Backend>)
                .with_config(engine_config(&format!("engine-{i}"))),
        );
        seen.push(record_commits(&engine, Arc::clone(&lagged)));
        engines.push(engine);
    }
    let (stop, stopped) = watch::channel(false);
    let mut handles = Vec::new();
    for e in &engines {
        let mut rx = stopped.clone();
        handles.push(tokio::spawn(Arc::clone(e).run(async move {
            let _ = rx.changed().await;
        })));
    }
    // Engines subscribe to backend observations in a task of their own:
    // let them do so before the first launch (see Engine::run).
    tokio::time::sleep(Duration::from_millis(200)).await;
    const RUNS: usize = 60;
    let (stages, per_stage) = (3u32, 4u32);
    let mut ids = Vec::new();
    for i in 0..RUNS {
        let submitted = engines[i % 3]
            .submit(spec(i, stages, per_stage))
            .await
            .unwrap();
        assert!(submitted.created);
        ids.push(submitted.id);
    }
    // A repeat submit is one run, not two.
    assert!(
        !engines[1]
            .submit(spec(0, stages, per_stage))
            .await
            .unwrap()
            .created
    );

    let store = RedisStore::connect(config.clone()).await.unwrap();
    wait_finished(&store, RUNS, Duration::from_secs(60)).await;
    stop.send(true).unwrap();
    for h in handles {
        h.await.unwrap().unwrap();
    }

    for id in &ids {
        let r = store.load_run(id).await.unwrap();
        assert_eq!(r.state, RunState::Succeeded, "run {id}");
    }
    // Every (task, attempt) created exactly once in the shared backend.
    let created = backend.created();
    assert_eq!(created.len(), RUNS * (stages * per_stage) as usize);
    assert!(created.values().all(|n| *n == 1));
    assert!(
        created.keys().all(|k| k.attempt == 1),
        "no retries were needed"
    );
    assert_eq!(
        backend.total_created(),
        (RUNS * (stages * per_stage) as usize) as u64
    );

    // Every version of every run was committed by exactly one engine, and
    // each run finished exactly once (one finish time, never changed).
    assert!(
        !*lagged.lock().unwrap(),
        "a commit recorder lagged; the check below would be incomplete"
    );
    let mut versions = HashSet::new();
    let mut finish: HashMap<RunId, HashSet<Option<u64>>> = HashMap::new();
    let mut per_engine = Vec::new();
    for s in &seen {
        let s = s.lock().unwrap();
        per_engine.push(s.len());
        for (id, v, state, finished) in s.iter() {
            assert!(
                versions.insert((id.clone(), *v)),
                "version {v} of {id} committed twice"
            );
            if state.is_finished() {
                finish.entry(id.clone()).or_default().insert(*finished);
            }
        }
    }
    assert_eq!(finish.len(), RUNS, "every run's finish was committed");
    assert!(
        finish.values().all(|f| f.len() == 1),
        "a run finished more than once: {finish:?}"
    );
    assert!(
        per_engine.iter().filter(|n| **n > 0).count() >= 2,
        "work was shared: {per_engine:?}"
    );
}

/// Entry point of a worker *process* for the kill test (run by re-executing
/// this test binary; ignored in normal runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process for worker_process_killed_with_sigkill; started by that test"]
async fn worker_process() {
    let Ok(url) = std::env::var("STAGETIME_TEST_WORKER_URL") else {
        // Run by `--ignored` without the kill test around it: nothing to drive.
        eprintln!("worker_process: not started by the kill test; nothing to do");
        return;
    };
    let prefix = std::env::var("STAGETIME_TEST_WORKER_PREFIX").unwrap();
    let consumer = std::env::var("STAGETIME_TEST_WORKER_CONSUMER").unwrap();
    let delay: u64 = std::env::var("STAGETIME_TEST_WORKER_DELAY_MS")
        .unwrap()
        .parse()
        .unwrap();
    let config = RedisConfig::new(&url)
        .with_prefix(&prefix)
        .with_reclaim_after(Duration::from_secs(1));
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
    let backend =
        support::durable::DurableBackend::new(&url, &config.prefix, Duration::from_millis(delay))
            .await;
    let engine = Arc::new(
        Engine::new(store, Arc::new(backend)).with_config(EngineConfig {
            batch: 8,
            reconcile_on_start: true,
            ..engine_config(&consumer)
        }),
    );
    engine.run(std::future::pending()).await.unwrap();
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, prefix: &str, consumer: &str, delay_ms: u64) -> KillOnDrop {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STAGETIME_TEST_WORKER_URL", url)
        .env("STAGETIME_TEST_WORKER_PREFIX", prefix)
        .env("STAGETIME_TEST_WORKER_CONSUMER", consumer)
        .env("STAGETIME_TEST_WORKER_DELAY_MS", delay_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process_killed_with_sigkill_and_a_new_one_finishes_every_run() {
    let Some(server) = support::shared() else {
        return;
    };
    let config = server
        .config("kill")
        .with_reclaim_after(Duration::from_secs(1));
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
    let backend = Arc::new(
        support::durable::DurableBackend::new(&server.url(), &config.prefix, Duration::ZERO).await,
    );
    let submitter = Engine::new(Arc::clone(&store), Arc::clone(&backend) as Arc<dyn Backend>);
    const RUNS: usize = 30;
    let (stages, per_stage) = (3u32, 4u32);
    let total = RUNS * (stages * per_stage) as usize;
    let mut ids = Vec::new();
    for i in 0..RUNS {
        ids.push(
            submitter
                .submit(spec(i, stages, per_stage))
                .await
                .unwrap()
                .id,
        );
    }

    let mut a = spawn_worker(&server.url(), &config.prefix, "worker-a", 15);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let n = backend.created().await.len();
        if n >= total / 4 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "worker A launched only {n} attempts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    a.0.kill().unwrap(); // SIGKILL
    a.0.wait().unwrap();
    let after_kill = backend.created().await.len();
    assert!(
        after_kill < total,
        "worker A was killed mid-way ({at_kill}..{after_kill} of {total})"
    );
    let unfinished = total
        - store
            .list_runs(&finished_filter())
            .await
            .unwrap()
            .runs
            .len();
    assert!(unfinished > 0);

    let _b = spawn_worker(&server.url(), &config.prefix, "worker-b", 0);
    wait_finished(&*store, RUNS, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(
            store.load_run(id).await.unwrap().state,
            RunState::Succeeded,
            "run {id}"
        );
    }
    let created = backend.created().await;
    assert_eq!(created.len(), total, "every task launched, none lost");
    assert!(
        created.iter().all(|k| k.ends_with("#1")),
        "no attempt was launched twice as a retry"
    );
    // Launching is idempotent; only attempts in flight at the kill may be asked for twice.
    let calls = backend.calls().await;
    let repeated = calls.values().filter(|n| **n > 1).count();
    eprintln!(
        "kill test: A launched {at_kill}..{after_kill} of {total} before SIGKILL; {repeated} attempts asked for twice"
    );
    assert!(calls.values().all(|n| *n <= 2), "{calls:?}");
    assert!(repeated <= 64, "{repeated} attempts asked for twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_recover_when_redis_restarts_mid_run() {
    let Some(server) = support::dedicated_with(&["--appendfsync", "always"]) else {
        return;
    };
    let config = server
        .config("restart")
        .with_reclaim_after(Duration::from_secs(1));
    let backend = InstantBackend::new();
    let mut engines = Vec::new();
    for i in 0..2 {
        let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
        engines.push(Arc::new(
            Engine::new(store, Arc::new(backend.clone()) as Arc<dyn Backend>)
                .with_config(engine_config(&format!("engine-{i}"))),
        ));
    }
    let (stop, stopped) = watch::channel(false);
    let mut handles = Vec::new();
    for e in &engines {
        let mut rx = stopped.clone();
        handles.push(tokio::spawn(Arc::clone(e).run(async move {
            let _ = rx.changed().await;
        })));
    }
    // Engines subscribe to backend observations in a task of their own:
    // let them do so before the first launch (see Engine::run).
    tokio::time::sleep(Duration::from_millis(200)).await;
    const RUNS: usize = 60;
    let (stages, per_stage) = (4u32, 5u32);
    let total = RUNS * (stages * per_stage) as usize;
    let mut ids = Vec::new();
    for i in 0..RUNS {
        ids.push(
            engines[0]
                .submit(spec(i, stages, per_stage))
                .await
                .unwrap()
                .id,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.total_created() < (total / 10) as u64 {
        assert!(Instant::now() < deadline, "engines made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let at_kill = backend.total_created();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart();
    let store = RedisStore::connect(config.clone()).await.unwrap();
    wait_finished(&store, RUNS, Duration::from_secs(60)).await;
    stop.send(true).unwrap();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    eprintln!("restart test: {at_kill} of {total} launched when Redis was killed");
    assert!(
        at_kill < total as u64,
        "Redis went away mid-run ({at_kill} of {total} launched)"
    );
    for id in &ids {
        assert_eq!(
            store.load_run(id).await.unwrap().state,
            RunState::Succeeded,
            "run {id}"
        );
    }
    let created = backend.created();
    assert_eq!(created.len(), total, "no task lost");
    assert!(created.values().all(|n| *n == 1));
    assert!(created.keys().all(|k| k.attempt == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_fails_that_run_only_and_the_engine_serves_the_others() {
    let Some(server) = support::shared() else {
        return;
    };
    let config = server
        .config("malformed")
        .with_reclaim_after(Duration::from_secs(2));
    let store = Arc::new(RedisStore::connect(config.clone()).await.unwrap());
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(InstantBackend::new()),
        )
        .with_config(engine_config("engine")),
    );
    // Runs 3 and 7 are stored and then damaged before the engine starts.
    let mut ids: Vec<Option<RunId>> = vec![None; 10];
    for i in [3, 7] {
        ids[i] = Some(engine.submit(spec(i, 2, 3)).await.unwrap().id);
    }
    let bad: Vec<RunId> = ids.iter().flatten().cloned().collect();
    let mut con = server.raw().await;
    let _: () = redis::cmd("HSET")
        .arg(store.keys().run(&bad[0]))
        .arg("rec")
        .arg("\u{0}garbage")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut foreign = serde_json::to_value(store.load_run(&bad[1]).await.unwrap()).unwrap();
    foreign["format"] = serde_json::json!(99);
    let _: () = redis::cmd("HSET")
        .arg(store.keys().run(&bad[1]))
        .arg("rec")
        .arg(foreign.to_string())
        .query_async(&mut con)
        .await
        .unwrap();

    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(Arc::clone(&engine).run(async move {
        let _ = stopped.changed().await;
    }));
    // The engine subscribes to backend observations in a task of its own:
    // let it do so before the first launch (see Engine::run).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, slot) in ids.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(engine.submit(spec(i, 2, 3)).await.unwrap().id);
        }
    }
    let ids: Vec<RunId> = ids.into_iter().flatten().collect();
    wait_finished(&*store, 8, Duration::from_secs(30)).await;
    for (i, id) in ids.iter().enumerate() {
        match i {
            3 | 7 => {
                let e = store.load_run(id).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                assert!(
                    e.to_string().contains(id.as_str()),
                    "the error names the run: {e}"
                );
                if i == 7 {
                    assert!(e.to_string().contains("format 99"), "{e}");
                }
            }
            _ => assert_eq!(store.load_run(id).await.unwrap().state, RunState::Succeeded),
        }
    }
    // The unreadable runs' work was acknowledged (dropped), not retried forever.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = store.stream_stats().await.unwrap();
        if stats.pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "work left pending: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    handle.await.unwrap().unwrap();
}

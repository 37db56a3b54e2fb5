//! `LocalBackend` reuses the outcomes left in its directory only for the same
//! run resumed, never for a run created again with the same id — the same
//! content submitted by a new process with a memory store.

use std::sync::Arc;

use futures::StreamExt;
use stagetime_core::backend::{LaunchKey, RunMeta};
use stagetime_core::local::LocalBackend;
use stagetime_core::{
    AttemptOutcome, Backend, Engine, LaunchRequest, MemoryStore, RevisionRunSpec, RunId, RunState,
    TaskSpec,
};

/// Where the child process runs its engine (set by the parent test).
const CHILD_ROOT: &str = "STAGETIME_TEST_LOCAL_ROOT";

/// One program run: a new engine and memory store over the local backend in
/// `root`, submitting the same content each time (so the same derived id).
async fn run_once(root: &std::path::Path) -> RunId {
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalBackend::new(root)),
    ));
    let running = engine.spawn();
    let log = root.join("runs.log");
    let spec = RevisionRunSpec::new("demo", "4f1c2e9").task(
        TaskSpec::new("count")
            .command(format!("echo \"$STAGETIME_RUN_ID\" >> '{}'", log.display())),
    );
    let run = engine.submit(spec).await.unwrap();
    let record = engine.wait_finished(&run.id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    running.shutdown().await.unwrap();
    run.id
}

/// The child half of [`the_same_content_run_by_two_processes_runs_twice`];
/// run alone, it runs once in a directory of its own.
#[tokio::test]
#[ignore = "a child process of the_same_content_run_by_two_processes_runs_twice"]
async fn child_runs_the_program_once() {
    let own = tempfile::tempdir().unwrap();
    let root = std::env::var_os(CHILD_ROOT).map_or_else(|| own.path().to_path_buf(), Into::into);
    let id = run_once(&root).await;
    assert!(root.join(id.as_str()).join("count").is_dir());
}

#[test]
fn the_same_content_run_by_two_processes_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for _ in 0..2 {
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_runs_the_program_once",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ROOT, dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "the child process failed: {status}");
    }
    let log = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    let ids: Vec<&str> = log.lines().collect();
    assert_eq!(ids.len(), 2, "the task must run in both processes: {log:?}");
    assert_eq!(
        ids[0], ids[1],
        "both processes ran the same (derived) run id"
    );
}

fn request(run: &RunId, created_ms: u64) -> LaunchRequest {
    LaunchRequest {
        key: LaunchKey {
            run: run.clone(),
            task: "t".into(),
            attempt: 1,
        },
        run: RunMeta {
            repo: "demo".into(),
            commit: "c".into(),
            created_ms,
            ..RunMeta::default()
        },
        task: TaskSpec::new("t").command("exit 3"),
        stage: Some(0),
        is_finally: false,
        timeout: None,
    }
}

#[tokio::test]
async fn the_same_creation_resumed_reuses_outcomes_a_new_creation_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunId::new("resume-demo").unwrap();
    let first = LocalBackend::new(dir.path());
    let mut seen = first.observe();
    assert!(first.launch(request(&run, 1_000)).await.unwrap().created);
    let ended = seen.next().await.unwrap().outcome;
    assert!(matches!(ended, AttemptOutcome::Failed { .. }), "{ended:?}");

    // A restarted process resuming the same run: nothing starts again, and
    // what the earlier process left is reported.
    let resumed = LocalBackend::new(dir.path());
    let mut seen = resumed.observe();
    assert!(!resumed.launch(request(&run, 1_000)).await.unwrap().created);
    assert_eq!(seen.next().await.unwrap().outcome, ended);
    assert_eq!(resumed.reconcile(&run).await.unwrap().len(), 1);

    // The same id created anew: the earlier run's directory is not reused.
    let recreated = LocalBackend::new(dir.path());
    let mut seen = recreated.observe();
    assert!(
        recreated
            .launch(request(&run, 2_000))
            .await
            .unwrap()
            .created
    );
    assert!(matches!(
        seen.next().await.unwrap().outcome,
        AttemptOutcome::Failed { .. }
    ));
    let marker = std::fs::read_to_string(dir.path().join("resume-demo/run.json")).unwrap();
    assert!(marker.contains("2000"), "{marker}");
}

/// Where the worker child of
/// [`an_attempt_whose_worker_is_killed_is_stopped_and_reported_lost`] keeps
/// its attempts.
const ORPHAN_ROOT: &str = "STAGETIME_TEST_ORPHAN_ROOT";

/// The worker half of
/// [`an_attempt_whose_worker_is_killed_is_stopped_and_reported_lost`]: it
/// launches a long attempt and waits to be killed.
#[tokio::test]
#[ignore = "a child process of an_attempt_whose_worker_is_killed_is_stopped_and_reported_lost"]
async fn child_launches_a_long_attempt_and_waits() {
    let Some(root) = std::env::var_os(ORPHAN_ROOT) else {
        return;
    };
    let backend = LocalBackend::new(std::path::PathBuf::from(root));
    let mut req = request(&RunId::new("orphan").unwrap(), 1_000);
    req.task = TaskSpec::new("t").command("echo $$ > pid; exec sleep 120");
    assert!(backend.launch(req).await.unwrap().created);
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
}

/// True once process `pid` is gone (or a zombie nobody reaped yet).
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
    }
}

#[tokio::test]
async fn an_attempt_whose_worker_is_killed_is_stopped_and_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut worker = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_launches_a_long_attempt_and_waits",
            "--ignored",
            "--test-threads=1",
        ])
        .env(ORPHAN_ROOT, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dir.path().join("orphan/t/1/pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Launched: the command runs and the worker listed it as live (a worker
    // dying before that leaves its launch in the run's outbox, and the
    // worker carrying it out again finds the attempt and reports it lost).
    let listed = dir.path().join(".live/orphan_t_1.json");
    let command_pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            && listed.exists()
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never launched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // kill -9 of the worker: its attempt's processes outlive it.
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(!is_gone(command_pid), "the attempt died with its worker");

    // Another backend on the same root settles it: the processes are
    // stopped and the attempt reported lost.
    let survivor = LocalBackend::new(dir.path());
    let mut seen = survivor.observe();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(60), seen.next())
        .await
        .expect("the lost attempt is reported")
        .unwrap();
    assert_eq!(ended.key, request(&RunId::new("orphan").unwrap(), 0).key);
    match &ended.outcome {
        AttemptOutcome::Lost { message } => {
            assert!(message.contains("its worker (pid"), "{message}")
        }
        other => panic!("expected lost, got {other:?}"),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !is_gone(command_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the attempt's processes still run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join(".live")).unwrap().count(),
        0,
        "the attempt is no longer listed as live"
    );
    // The recorded end is what every later look reports.
    let later = LocalBackend::new(dir.path());
    let mut seen = later.observe();
    let mut req = request(&RunId::new("orphan").unwrap(), 1_000);
    req.task = TaskSpec::new("t").command("exit 0");
    assert!(!later.launch(req).await.unwrap().created);
    assert_eq!(seen.next().await.unwrap().outcome, ended.outcome);
    assert_eq!(
        later.reconcile(&ended.key.run).await.unwrap()[0].outcome,
        ended.outcome
    );
}

#[tokio::test]
async fn an_attempt_that_finished_after_its_worker_died_reports_its_exit_status() {
    // What a worker killed after the command ended, before it recorded the
    // end, leaves: the live entry and the wrapper's exit status. Owner and
    // group carry an impossible start time, so they count as gone even if
    // the pid is reused.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    std::fs::create_dir_all(root.join("done/t/1")).unwrap();
    std::fs::create_dir_all(root.join("done/u/1")).unwrap();
    std::fs::write(root.join("done/run.json"), r#"{"created_ms":1000}"#).unwrap();
    std::fs::write(root.join("done/t/1.exit"), "0\n").unwrap();
    std::fs::write(root.join("done/u/1.exit"), "3\n").unwrap();
    std::fs::create_dir_all(root.join(".live")).unwrap();
    for task in ["t", "u"] {
        let entry = format!(
            r#"{{"key":{{"run":"done","task":"{task}","attempt":1}},"created_ms":1000,"owner":{{"pid":{pid},"start":0}},"group":{{"pid":{pid},"start":0}}}}"#
        );
        std::fs::write(root.join(format!(".live/done_{task}_1.json")), entry).unwrap();
    }
    let backend = LocalBackend::new(root);
    let mut seen = backend.observe();
    let mut ends = Vec::new();
    for _ in 0..2 {
        let o = tokio::time::timeout(std::time::Duration::from_secs(60), seen.next())
            .await
            .expect("the attempts are settled")
            .unwrap();
        ends.push((o.key.task, o.outcome));
    }
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ends[0], ("t".to_string(), AttemptOutcome::Succeeded));
    match &ends[1] {
        (task, AttemptOutcome::Failed { message }) if task == "u" => {
            assert!(message.contains("exited with status 3"), "{message}")
        }
        other => panic!("expected u failed, got {other:?}"),
    }
}

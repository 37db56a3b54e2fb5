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

//! Task logs of local attempts: kept in the store while they run
//! (`LogCapture`), followed to the end of a run, bounded, and still there
//! after housekeeping deleted the attempt directories.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use stagetime_core::backend::{Backend, Housekeeping};
use stagetime_core::local::{LocalBackend, LocalLogSource};
use stagetime_core::logs::{CaptureMode, LogCapture, LogStream, StoreLogSource};
use stagetime_core::store::Store;
use stagetime_core::{
    Engine, ErrorKind, LogChunk, LogQuery, LogSource, MemoryStore, RevisionRunSpec, RunState,
    TaskSpec,
};

/// Every chunk of `stream` (a guard against a hang, not a timing assertion).
async fn collect(stream: LogStream) -> Vec<LogChunk> {
    tokio::time::timeout(
        Duration::from_secs(120),
        stream.map(|c| c.unwrap()).collect(),
    )
    .await
    .expect("the log stream ends")
}

/// The text each task wrote, in stream order: `task#attempt: text`.
fn texts(chunks: &[LogChunk]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for c in chunks {
        let who = format!("{}#{}", c.task, c.attempt);
        match out.last_mut() {
            Some((w, t)) if *w == who => t.push_str(&c.text),
            _ => out.push((who, c.text.clone())),
        }
    }
    out
}

struct Local {
    _dir: tempfile::TempDir,
    backend: LocalBackend,
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
}

fn local(keep: usize) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(dir.path());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let capture = LogCapture::new(
        Arc::new(backend.clone()),
        Arc::clone(&store),
        Arc::new(LocalLogSource::new(backend.root())),
        CaptureMode::Live,
        keep,
    );
    let engine = Arc::new(Engine::new(Arc::clone(&store), Arc::new(capture)));
    Local {
        _dir: dir,
        backend,
        store,
        engine,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_run_streams_every_task_to_its_end_and_the_logs_outlive_housekeeping() {
    let l = local(64 * 1024);
    let running = l.engine.spawn();
    let spec = RevisionRunSpec::new("logs", "c0ffee")
        .task(TaskSpec::new("build").command("echo compiling; sleep 1; echo 'built ✓'"))
        .task(TaskSpec::new("test").stage(1).command(
            "for i in 1 2 3; do echo \"case $i\"; sleep 0.3; done; printf 'no newline'; exit 3",
        ));
    let run = l.engine.submit(spec).await.unwrap();
    let logs = StoreLogSource::new(Arc::clone(&l.store));
    // Opened while the first task runs; ends by itself when the run has.
    let followed = collect(
        logs.open(LogQuery {
            follow: true,
            ..LogQuery::run(run.id.clone())
        })
        .await
        .unwrap(),
    )
    .await;
    let expected = vec![
        ("build#1".to_string(), "compiling\nbuilt ✓\n".to_string()),
        (
            "test#1".to_string(),
            "case 1\ncase 2\ncase 3\nno newline".to_string(),
        ),
    ];
    assert_eq!(texts(&followed), expected);
    let record = l.engine.wait_finished(&run.id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert!(
        followed.iter().all(|c| c.step.is_none()),
        "local attempts have no steps"
    );

    // Housekeeping deletes the attempt directories; the store still has the logs.
    let report = l
        .backend
        .housekeeping(&Housekeeping {
            ttl: Duration::ZERO,
            keep_last: 0,
            now_ms: u64::MAX / 2,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 1, "{report:?}");
    let files = LocalLogSource::new(l.backend.root());
    let gone = files
        .open(LogQuery::task(run.id.clone(), "test"))
        .await
        .err()
        .expect("the log file is gone");
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
    let archived = collect(logs.open(LogQuery::run(run.id.clone())).await.unwrap()).await;
    assert_eq!(texts(&archived), expected);
    let one = collect(
        logs.open(LogQuery {
            attempt: Some(1),
            ..LogQuery::task(run.id.clone(), "test")
        })
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(texts(&one), expected[1..]);

    let unknown = logs
        .open(LogQuery::task(run.id.clone(), "deploy"))
        .await
        .err()
        .expect("no such task");
    assert_eq!(unknown.kind(), ErrorKind::NotFound);
    assert!(unknown.to_string().contains("build, test"), "{unknown}");
    let no_attempt = logs
        .open(LogQuery {
            attempt: Some(2),
            ..LogQuery::task(run.id.clone(), "test")
        })
        .await
        .err()
        .expect("no second attempt");
    assert!(no_attempt.to_string().contains("it has 1"), "{no_attempt}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_tail_is_bounded_and_says_what_was_not_kept() {
    let l = local(100);
    let running = l.engine.spawn();
    let spec = RevisionRunSpec::new("logs", "tail")
        .task(TaskSpec::new("noisy").command("for i in $(seq 10 59); do echo \"line $i\"; done"));
    let run = l.engine.submit(spec).await.unwrap();
    l.engine.wait_finished(&run.id).await.unwrap();
    let logs = StoreLogSource::new(Arc::clone(&l.store));
    let text: String = collect(logs.open(LogQuery::run(run.id.clone())).await.unwrap())
        .await
        .into_iter()
        .map(|c| c.text)
        .collect();
    // 50 lines of 8 bytes: the last 100 bytes hold 12 whole lines and a part.
    let (marker, kept) = text.split_once('\n').unwrap();
    assert_eq!(marker, "[stagetime: 304 bytes of this log were not kept]");
    let expected: String = (48..60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(kept, expected);
    running.shutdown().await.unwrap();
}

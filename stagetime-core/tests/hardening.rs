#![cfg(feature = "test-util")]
//! Regression tests of issue 11 (input safety): each defect with the input
//! that showed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stagetime_core::backend::Backend;
use stagetime_core::control::RunControl;
use stagetime_core::engine::{Engine, EngineConfig, EngineListener};
use stagetime_core::limits::{MAX_RETRIES, MAX_TIMEOUT};
use stagetime_core::memory::MemoryStore;
use stagetime_core::plan::Plan;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::spec::{DocumentFormat, RevisionRunSpec, parse_document};
use stagetime_core::store::{Commit, RunId, RunRecord, RunState, Store};
use stagetime_core::testkit::InstantBackend;
use stagetime_core::{Error, Result};

/// Every problem `parse_document` + `Plan::build` report for `text`, as
/// `validate`, `run` and `submit` see them.
fn refusal(text: &str) -> String {
    match parse_document("t.yaml", text).and_then(|(spec, _)| Plan::build(spec).map(|_| ())) {
        Ok(()) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn one_task(field: &str) -> String {
    format!("repo: r\ncommit: c\ntasks:\n  - {{name: a, command: \"true\", {field}}}\n")
}

#[test]
fn huge_timeouts_and_retries_are_refused_naming_the_field() {
    for (field, path) in [
        ("timeout: \"18446744073709551s\"", "tasks[0].timeout"),
        ("timeout: \"18446744073709552s\"", "tasks[0].timeout"),
        ("timeout: 99999999h", "tasks[0].timeout"),
        ("timeout: 31d", "tasks[0].timeout"),
        ("retry_delay: 2d", "tasks[0].retry_delay"),
        ("retries: 4294967295", "tasks[0].retries"),
        ("retries: 101", "tasks[0].retries"),
    ] {
        let err = refusal(&one_task(field));
        assert!(err.contains(path), "{field}: {err}");
        assert!(err.contains("maximum"), "{field}: {err}");
    }
    let err = refusal(
        "repo: r\ncommit: c\noptions: {timeout: 99999999h, max_parallel: 4294967295}\ntasks: [{name: a, command: x}]",
    );
    assert!(err.contains("options.timeout"), "{err}");
    assert!(err.contains("options.max_parallel"), "{err}");
    // The bounds themselves are fine.
    let (spec, _) = parse_document(
        "t.yaml",
        &one_task(&format!(
            "timeout: 30d, retries: {MAX_RETRIES}, retry_delay: 1d"
        )),
    )
    .unwrap();
    let plan = Plan::build(spec).unwrap();
    assert_eq!(plan.task(0).timeout, Some(MAX_TIMEOUT));
}

#[tokio::test]
async fn a_run_with_the_longest_timeouts_runs() {
    let store = Arc::new(MemoryStore::new());
    let engine =
        Arc::new(Engine::new(store, Arc::new(InstantBackend::new())).with_config(config()));
    let (spec, _) = parse_document(
        "t.yaml",
        "repo: r\ncommit: c\noptions: {timeout: 30d}\ntasks: [{name: a, command: \"true\", timeout: 30d}]",
    )
    .unwrap();
    let id = engine.submit(spec).await.unwrap().id;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stopped.await;
    }));
    let record = engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

/// The reproducer of issue 11: 600 KB of YAML that expands to 15 billion values.
fn alias_bomb() -> String {
    format!(
        "repo: d\ncommit: c\nx: &x [{}]\ny: [{}]\ntasks:\n  - {{name: a, command: \"true\"}}\n",
        vec!["1"; 150_000].join(","),
        vec!["*x"; 100_000].join(",")
    )
}

#[test]
fn an_alias_bomb_is_refused_without_expanding_it() {
    let text = alias_bomb();
    assert!(text.len() < 1 << 20, "under the gRPC size limit");
    let err = parse_document("q.yaml", &text).unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains("values once aliases are expanded"),
        "{err}"
    );
}

#[test]
fn deep_nesting_and_scalar_aliases_are_refused() {
    let deep = format!(
        "repo: r\ncommit: c\nx: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let err = parse_document("deep.yaml", &deep).unwrap_err().to_string();
    assert!(err.contains("nests deeper than 64"), "{err}");
    let deep_json = format!(
        "{{\"repo\": \"r\", \"x\": {}{}}}",
        "{\"a\": ".repeat(100),
        "}".repeat(100)
    );
    let err = parse_document("deep.json", &deep_json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nests deeper than 64"), "{err}");
    // A long string repeated by aliases grows the text, not the value count.
    let text = format!(
        "repo: r\ncommit: c\nx: &x \"{}\"\ny: [{}]\n",
        "a".repeat(100_000),
        vec!["*x"; 100].join(",")
    );
    let err = parse_document("s.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("grows past twice its size"), "{err}");
}

#[test]
fn modest_aliases_still_work() {
    let text = "repo: r\ncommit: c\ntasks:\n  - {name: a, command: &cmd \"make test\"}\n  - {name: b, command: *cmd}\n";
    let (spec, format) = parse_document("a.yaml", text).unwrap();
    assert_eq!(format, DocumentFormat::Native);
    assert_eq!(spec.tasks[1].command.as_deref(), Some("make test"));
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let text = "\u{feff}repo: r\ncommit: c\ntasks: [{name: a, command: \"true\"}]\n";
    let (spec, _) = parse_document("bom.yaml", text).unwrap();
    assert_eq!(spec.repo, "r");
    let json = "\u{feff}{\"repo_name\": \"r\", \"commit_id\": \"c\", \"pipelineruns\": [{\"name\": \"a\"}]}";
    let (_, format) = parse_document("bom.json", json).unwrap();
    assert_eq!(format, DocumentFormat::Legacy);
}

#[test]
fn validation_refuses_the_ids_submission_refuses() {
    let text = "id: Not_An_Id\nrepo: r\ncommit: c\ntasks: [{name: a, command: \"true\"}]\n";
    let err = refusal(text);
    assert!(
        err.contains("id: \"Not_An_Id\" is not a valid run id"),
        "{err}"
    );
}

#[test]
fn a_long_name_is_not_echoed_in_full() {
    let name = "X".repeat(10_000);
    let text = format!(
        "repo: r\ncommit: c\ntasks: [{{name: {name}, command: \"true\"}}, {{name: b, needs: [{name}], command: x}}]\n"
    );
    let err = refusal(&text);
    assert!(err.len() < 1_000, "{} bytes: {err:.300}", err.len());
    assert!(err.contains("(10000 characters)"), "{err}");
}

#[test]
fn legacy_stages_in_protobuf_json_forms_must_be_whole_numbers() {
    for stage in ["\"NaN\"", "\"Infinity\"", "\"-Infinity\"", "\"1.5\"", "-1"] {
        let text = format!(
            "{{\"repo_name\": \"r\", \"commit_id\": \"c\", \"pipelineruns\": [{{\"name\": \"a\", \"stage\": {stage}}}]}}"
        );
        let err = refusal(&text);
        assert!(
            err.contains("pipelineruns[0].stage") || err.contains("tasks[0].stage"),
            "{stage}: {err}"
        );
        assert!(err.contains("must be a whole number"), "{stage}: {err}");
    }
    let text = "{\"repo_name\": \"r\", \"commit_id\": \"c\", \"pipelineruns\": [{\"name\": \"a\", \"stage\": \"2\"}]}";
    let (spec, _) = parse_document("l.json", text).unwrap();
    assert_eq!(spec.tasks[0].stage.unwrap().whole(), Some(2));
}

fn config() -> EngineConfig {
    EngineConfig {
        consumer: "hardening".into(),
        claim_wait: Duration::from_millis(100),
        purge_every: None,
        reconcile_on_start: false,
        ..EngineConfig::default()
    }
}

#[derive(Default)]
struct Counting {
    committed: AtomicU32,
    quarantined: AtomicU32,
}

impl EngineListener for Counting {
    fn committed(&self, _: &RunRecord, _: &RunRecord) {
        self.committed.fetch_add(1, Ordering::SeqCst);
    }

    fn quarantined(&self, _: &RunId, reason: &str) {
        assert!(!reason.is_empty());
        self.quarantined.fetch_add(1, Ordering::SeqCst);
    }
}

fn wide_run(tasks: usize, max_parallel: u32) -> RevisionRunSpec {
    let mut text =
        format!("repo: r\ncommit: c\noptions: {{max_parallel: {max_parallel}}}\ntasks:\n");
    for i in 0..tasks {
        text.push_str(&format!("  - {{name: t{i}, command: \"true\"}}\n"));
    }
    parse_document("wide.yaml", &text).unwrap().0
}

/// Issue 11, defect 3: a subscriber that reads nothing (a stalled progress
/// display) made the engine keep a copy of the whole run per commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_a_bounded_number_of_records() {
    const TASKS: usize = 300;
    let listener = Arc::new(Counting::default());
    let store = Arc::new(MemoryStore::new());
    let engine = Arc::new(
        Engine::new(store.clone(), Arc::new(InstantBackend::new()))
            .with_config(config())
            .with_listener(listener.clone()),
    );
    let mut stalled = engine.subscribe();
    let id = engine.submit(wide_run(TASKS, 2)).await.unwrap().id;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stopped.await;
    }));
    let record = engine.wait_finished(&id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    let commits = listener.committed.load(Ordering::SeqCst) as usize;
    assert!(commits >= TASKS, "{commits} commits");
    // The subscriber missed all but the last few records: only those were kept.
    let mut kept = 0;
    let mut missed = 0;
    loop {
        match stalled.try_recv() {
            Ok(_) => kept += 1,
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => missed += n,
            Err(_) => break,
        }
    }
    assert!(
        kept <= 16,
        "{kept} records kept for a subscriber that reads nothing"
    );
    assert_eq!(
        kept + missed as usize,
        commits,
        "every commit was published"
    );
    // Nothing left queued or in flight: no work is re-queued.
    let stats = store.stats(u64::MAX).await.unwrap().unwrap();
    assert_eq!(
        (
            stats.queue.ready,
            stats.queue.in_flight,
            stats.queue.delayed
        ),
        (0, 0, 0),
        "{stats:?}"
    );
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

/// Rewrites run `id` in `store` with `change` applied, as a corrupt or
/// foreign writer would.
async fn tamper(store: &MemoryStore, id: &RunId, change: impl FnOnce(&mut RunRecord)) {
    let record = store.load_run(id).await.unwrap();
    let mut next = record.clone();
    change(&mut next);
    next.version = record.version + 1;
    store
        .commit(Commit {
            expected_version: record.version,
            record: next,
            enqueue: Vec::new(),
            ack: Vec::new(),
        })
        .await
        .unwrap();
}

/// A run whose processing panics (here: a record whose task timings were
/// lost, so the engine indexes past them) or whose record is corrupt (its
/// scheduler state does not fit its document) is quarantined; the engine
/// lives on and other runs finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_breaks_processing_is_quarantined_while_others_finish() {
    let store = Arc::new(MemoryStore::new());
    let backend: Arc<dyn Backend> = Arc::new(InstantBackend::new());
    let control = RunControl::new(store.clone());
    let submit = |name: &'static str| {
        let control = control.clone();
        async move {
            let text = format!(
                "repo: {name}\ncommit: c\ntasks: [{{name: a, command: \"true\"}}, {{name: b, stage: 1, command: \"true\"}}]\n"
            );
            let spec = parse_document("t.yaml", &text).unwrap().0;
            control.submit(spec, None).await.unwrap().id
        }
    };
    let panicking = submit("panics").await;
    let corrupt = submit("corrupt").await;
    let healthy = submit("healthy").await;
    tamper(&store, &panicking, |r| r.timings.clear()).await;
    tamper(&store, &corrupt, |r| {
        let mut extra = r.spec.tasks[0].clone();
        extra.name = "extra".into();
        r.spec.tasks.push(extra);
    })
    .await;

    let listener = Arc::new(Counting::default());
    let engine = Arc::new(
        Engine::new(store.clone(), backend)
            .with_config(config())
            .with_listener(listener.clone()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stopped.await;
    }));
    let ok = engine.wait_finished(&healthy).await.unwrap();
    assert_eq!(ok.state, RunState::Succeeded);
    for (id, why) in [(&panicking, "panicked"), (&corrupt, "corrupt")] {
        let r = engine.wait_finished(id).await.unwrap();
        assert_eq!(r.state, RunState::Failed, "{id}");
        let t = &r.scheduler.tasks()[0];
        assert!(
            matches!(t.status, TaskStatus::Skipped | TaskStatus::Failed),
            "{id}: {t:?}"
        );
        let message = t.message.as_deref().unwrap_or_default();
        assert!(message.starts_with("internal error: "), "{id}: {message}");
        assert!(message.contains(why), "{id}: {message}");
    }
    assert_eq!(listener.quarantined.load(Ordering::SeqCst), 2);
    // Their work was acknowledged: nothing comes back to crash another engine.
    let stats = store.stats(u64::MAX).await.unwrap().unwrap();
    assert_eq!(
        (stats.queue.ready, stats.queue.in_flight),
        (0, 0),
        "{stats:?}"
    );
    assert!(!worker.is_finished(), "the engine is still running");
    let _ = stop.send(());
    let ended: Result<()> = worker.await.unwrap();
    ended.unwrap();
}

#[test]
fn parse_limits_are_configurable() {
    use stagetime_core::limits::ParseLimits;
    use stagetime_core::spec::parse_document_within;
    let text = "repo: r\ncommit: c\ntasks: [{name: a, command: \"true\"}]\n";
    let tight = ParseLimits {
        max_bytes: 16,
        ..ParseLimits::default()
    };
    let err = parse_document_within("t.yaml", text, &tight)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the maximum of 16 bytes"), "{err}");
    let shallow = ParseLimits {
        max_depth: 1,
        ..ParseLimits::default()
    };
    let err = parse_document_within("t.yaml", text, &shallow)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nests deeper than 1 levels"), "{err}");
    assert!(parse_document_within("t.yaml", text, &ParseLimits::default()).is_ok());
}

#[test]
fn a_long_id_is_not_echoed_in_full() {
    let text = format!(
        "id: {}\nrepo: r\ncommit: c\ntasks: [{{name: a, command: \"true\"}}]\n",
        "i".repeat(10_000)
    );
    let err = refusal(&text);
    assert!(err.len() < 500, "{} bytes", err.len());
    assert!(err.contains("(10000 characters)"), "{err}");
}

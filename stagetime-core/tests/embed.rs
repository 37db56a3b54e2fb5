//! What an embedding program relies on: `FnBackend`'s contracts, the
//! `custom` payload, `Engine::wait_finished` without a run loop, the
//! builders and the per-task view of a record.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use stagetime_core::backend::{Capabilities, LaunchKey, RunMeta};
use stagetime_core::local::LocalBackend;
use stagetime_core::plan::Plan;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::{
    AttemptOutcome, Backend, Engine, ErrorKind, FnBackend, LaunchRequest, MemoryStore,
    RevisionRunSpec, RunId, RunState, TaskSpec,
};

fn request(run: &str, task: TaskSpec) -> LaunchRequest {
    LaunchRequest {
        key: LaunchKey {
            run: RunId::new(run).unwrap(),
            task: task.name.clone(),
            attempt: 1,
        },
        run: RunMeta::default(),
        task,
        stage: Some(0),
        is_finally: false,
        timeout: None,
    }
}

#[tokio::test]
async fn a_cancel_is_observed_even_when_the_function_ignores_its_token() {
    let backend = FnBackend::new("deaf", Capabilities::CUSTOM, |_, _cancel| async {
        std::future::pending::<()>().await;
        AttemptOutcome::Succeeded
    });
    let mut observed = backend.observe();
    let req = request("deaf-run", TaskSpec::new("forever").custom(json!(null)));
    assert!(backend.launch(req.clone()).await.unwrap().created);
    backend.cancel(&req.key).await.unwrap();
    let o = observed.next().await.unwrap();
    assert_eq!(o.key, req.key);
    assert!(
        matches!(o.outcome, AttemptOutcome::Cancelled { .. }),
        "{o:?}"
    );
    // Finished attempts stay known: a repeat launch starts nothing.
    assert!(!backend.launch(req.clone()).await.unwrap().created);
    let found = backend.reconcile(&req.key.run).await.unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn a_panicking_attempt_fails_naming_the_panic() {
    let backend = FnBackend::new("boom", Capabilities::CUSTOM, |_, _| async {
        panic!("the payload was wrong")
    });
    let mut observed = backend.observe();
    backend
        .launch(request("boom-run", TaskSpec::new("boom").custom(json!(1))))
        .await
        .unwrap();
    match observed.next().await.unwrap().outcome {
        AttemptOutcome::Failed { message } => {
            assert!(message.contains("the payload was wrong"), "{message}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn housekeeping_forgets_finished_attempts_past_the_ttl() {
    let backend = FnBackend::new("ok", Capabilities::CUSTOM, |_, _| async {
        AttemptOutcome::Succeeded
    });
    let mut observed = backend.observe();
    let req = request("hk-run", TaskSpec::new("a").custom(json!(1)));
    backend.launch(req.clone()).await.unwrap();
    observed.next().await.unwrap();
    let policy = stagetime_core::backend::Housekeeping {
        ttl: Duration::from_secs(3600),
        keep_last: 0,
        now_ms: u64::MAX,
    };
    let report = backend.housekeeping(&policy).await.unwrap();
    assert_eq!(report.deleted, vec![req.key.to_string()]);
    assert!(backend.reconcile(&req.key.run).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_finished_without_a_run_loop_is_an_error_not_a_hang() {
    let backend = FnBackend::new("ok", Capabilities::CUSTOM, |_, _| async {
        AttemptOutcome::Succeeded
    });
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(backend));
    let run = engine
        .submit(RevisionRunSpec::new("demo", "c1").task(TaskSpec::new("a").custom(json!(1))))
        .await
        .unwrap();
    let err = engine.wait_finished(&run.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("Engine::spawn"), "{err}");
}

#[tokio::test]
async fn a_spawned_engine_runs_custom_tasks_and_the_record_names_each_task() {
    let backend = FnBackend::new("flaky", Capabilities::CUSTOM, |request, _| async move {
        let flaky = request.task.custom.unwrap_or_default()["flaky"] == json!(true);
        if flaky && request.key.attempt == 1 {
            AttemptOutcome::Failed {
                message: "first try".into(),
            }
        } else {
            AttemptOutcome::Succeeded
        }
    });
    let engine = Arc::new(Engine::new(Arc::new(MemoryStore::new()), Arc::new(backend)));
    let running = engine.spawn();
    // Waiting right after spawning is fine: the loop counts from `spawn` on.
    let spec = RevisionRunSpec::new("demo", "c2")
        .task(TaskSpec::new("build").custom(json!({})))
        .task(
            TaskSpec::new("test")
                .stage(1)
                .retries(1)
                .custom(json!({"flaky": true})),
        )
        .finally_task(TaskSpec::new("report").custom(json!({})));
    let run = engine.submit(spec).await.unwrap();
    let record = engine.wait_finished(&run.id).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    let tasks: Vec<(String, bool, TaskStatus, u32)> = record
        .tasks()
        .map(|t| (t.name().to_string(), t.is_finally, t.status, t.attempts))
        .collect();
    assert_eq!(
        tasks,
        vec![
            ("build".into(), false, TaskStatus::Succeeded, 1),
            ("test".into(), false, TaskStatus::Succeeded, 2),
            ("report".into(), true, TaskStatus::Succeeded, 1),
        ]
    );
    let test = record.task("test").unwrap();
    assert!(test.timing.first_launch_ms.is_some() && test.timing.finished_ms.is_some());
    running.shutdown().await.unwrap();
}

#[test]
fn the_custom_payload_is_read_as_written_and_unknown_keys_are_still_rejected() {
    let spec: RevisionRunSpec = yaml_serde::from_str(
        "{repo: r, commit: c, tasks: [{name: a, custom: {image: alpine, args: [1, 2]}}]}",
    )
    .unwrap();
    assert_eq!(
        spec.tasks[0].custom,
        Some(json!({"image": "alpine", "args": [1, 2]}))
    );
    let plan = Plan::build(spec).expect("a custom payload is something to run");
    assert!(Capabilities::CUSTOM.can_run(&plan.task(0).spec));
    assert!(!LocalBackend::CAPABILITIES.can_run(&plan.task(0).spec));

    let unknown = yaml_serde::from_str::<RevisionRunSpec>(
        "{repo: r, commit: c, tasks: [{name: a, with: {x: 1}}]}",
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("unknown field `with`"), "{unknown}");

    let nothing = Plan::build(RevisionRunSpec::new("r", "c").task(TaskSpec::new("a")))
        .unwrap_err()
        .to_string();
    assert!(nothing.contains("`custom`"), "{nothing}");
}

#[tokio::test]
async fn a_backend_without_the_custom_capability_refuses_custom_tasks_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalBackend::new(dir.path())),
    );
    let err = engine
        .submit(
            RevisionRunSpec::new("demo", "c3")
                .task(TaskSpec::new("ok").command("true"))
                .task(TaskSpec::new("odd").custom(json!({}))),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tasks[1]") && err.contains("\"odd\""), "{err}");
    assert!(err.contains("`command`"), "{err}");
}

#[test]
fn the_builders_write_what_the_document_says() {
    let built = RevisionRunSpec::new("demo", "c4")
        .task(TaskSpec::new("a").command("make"))
        .task(
            TaskSpec::new("b")
                .stage(2)
                .needs(["a"])
                .can_fail()
                .retries(3)
                .timeout("5m")
                .command("make test"),
        )
        .finally_task(TaskSpec::new("z").custom(json!({"k": "v"})));
    let parsed: RevisionRunSpec = yaml_serde::from_str(
        r#"
repo: demo
commit: c4
tasks:
  - { name: a, command: make }
  - { name: b, stage: 2, needs: [a], can_fail: true, retries: 3, timeout: 5m, command: make test }
finally:
  - { name: z, custom: { k: v } }
"#,
    )
    .unwrap();
    assert_eq!(built, parsed);
}

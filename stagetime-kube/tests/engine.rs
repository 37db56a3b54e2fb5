//! End to end through stagetime-core's engine with `TektonBackend` on the
//! Kubernetes-API emulator: a three-stage revision run with a retry, an
//! allowed failure and finally that succeeds; and a four-stage one with a
//! retry and an allowed failure that is cancelled in stage 2 (its finally task
//! still runs).

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use stagetime_core::engine::{Engine, EngineConfig};
use stagetime_core::memory::MemoryStore;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::spec::{PipelineSpec, RevisionRunSpec, TaskSpec};
use stagetime_core::testkit::unique;
use stagetime_core::{RunRecord, RunState};
use stagetime_kube::TektonBackend;
use stagetime_kube::types::PipelineRun;
use support::{Controller, config, emulator, namespace, outcome_params};
use tokio::sync::oneshot;

fn task(name: &str, stage: Option<u32>, outcome: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        stage: stage.map(Into::into),
        pipeline: Some(PipelineSpec {
            pipeline_ref: Some("simulated".into()),
            params: outcome_params(outcome),
            ..PipelineSpec::default()
        }),
        ..TaskSpec::default()
    }
}

fn status_of(record: &RunRecord, name: &str) -> (TaskStatus, u32) {
    let plan = stagetime_core::Plan::build(record.spec.clone()).expect("plan");
    let i = plan.index_of(name).expect("task") as usize;
    let t = &record.scheduler.tasks()[i];
    (t.status, t.attempt)
}

struct Running {
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<stagetime_core::Result<()>>,
    api: Api<PipelineRun>,
    _controller: Controller,
}

impl Running {
    async fn start() -> Option<Running> {
        let emu = tokio::task::spawn_blocking(emulator)
            .await
            .expect("emulator start")?;
        let ns = namespace();
        let controller = Controller::start(emu.client(&ns), &ns);
        let backend = Arc::new(TektonBackend::new(emu.client(&ns), config(&ns)));
        let engine = Arc::new(
            Engine::new(Arc::new(MemoryStore::new()), backend).with_config(EngineConfig {
                claim_wait: Duration::from_millis(100),
                ..EngineConfig::default()
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Arc::clone(&engine).run(async move {
            let _ = stopped.await;
        }));
        Some(Running {
            engine,
            stop: Some(stop),
            task,
            api: Api::namespaced(emu.client(&ns), &ns),
            _controller: controller,
        })
    }

    async fn finish(&self, id: &stagetime_core::RunId) -> RunRecord {
        tokio::time::timeout(Duration::from_secs(60), self.engine.wait_finished(id))
            .await
            .expect("the run finishes within 60 s")
            .expect("wait")
    }

    async fn pipelineruns(&self) -> Vec<PipelineRun> {
        self.api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "the engine stops cleanly: {r:?}"
        );
    }
}

fn label<'a>(pr: &'a PipelineRun, k: &str) -> &'a str {
    pr.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(&format!("stagetime/{k}")))
        .map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_with_retry_allowed_failure_and_finally() {
    let Some(rt) = Running::start().await else {
        return;
    };
    let mut flaky = task("unit", Some(0), "flaky");
    flaky.retries = 1;
    flaky.retry_delay = Some("100ms".into());
    let mut optional = task("optional", Some(1), "fail");
    optional.can_fail = true;
    let spec = RevisionRunSpec {
        id: Some(unique("e2e")),
        repo: "demo".into(),
        commit: "4f1".into(),
        author: Some("Jane Doe".into()),
        tasks: vec![
            task("lint", Some(0), "succeed"),
            flaky,
            optional,
            task("image", Some(1), "succeed"),
            task("deploy", Some(2), "succeed"),
        ],
        finally: vec![task("notify", None, "succeed")],
        ..RevisionRunSpec::default()
    };
    let id = rt.engine.submit(spec).await.expect("submit").id;
    let record = rt.finish(&id).await;
    assert_eq!(record.state, RunState::Succeeded, "{:#?}", record.scheduler);
    assert_eq!(
        status_of(&record, "unit"),
        (TaskStatus::Succeeded, 2),
        "failed once, retried"
    );
    assert_eq!(
        status_of(&record, "optional").0,
        TaskStatus::Failed,
        "allowed to fail"
    );
    assert_eq!(status_of(&record, "deploy"), (TaskStatus::Succeeded, 1));
    assert_eq!(status_of(&record, "notify"), (TaskStatus::Succeeded, 1));

    let prs = rt.pipelineruns().await;
    let mut seen: Vec<(String, String, String)> = prs
        .iter()
        .map(|p| {
            (
                label(p, "task").to_string(),
                label(p, "attempt").to_string(),
                label(p, "stage").to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, String)> = [
        ("deploy", "1", "2"),
        ("image", "1", "1"),
        ("lint", "1", "0"),
        ("notify", "1", "finally"),
        ("optional", "1", "1"),
        ("unit", "1", "0"),
        ("unit", "2", "0"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want, "one PipelineRun per attempt, nothing else");
    assert!(prs.iter().all(|p| label(p, "run") == id.as_str()));
    let optional_pr = prs.iter().find(|p| label(p, "task") == "optional").unwrap();
    assert_eq!(
        optional_pr.metadata.annotations.as_ref().unwrap()["canfail"],
        "true"
    );
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_with_retry_allowed_failure_then_cancel() {
    let Some(rt) = Running::start().await else {
        return;
    };
    let mut flaky = task("unit", Some(0), "flaky");
    flaky.retries = 2;
    flaky.retry_delay = Some("100ms".into());
    let mut optional = task("optional", Some(1), "fail");
    optional.can_fail = true;
    let spec = RevisionRunSpec {
        id: Some(unique("cancel")),
        repo: "demo".into(),
        commit: "4f1".into(),
        tasks: vec![
            task("lint", Some(0), "succeed"),
            flaky,
            optional,
            task("image", Some(1), "succeed"),
            task("long", Some(2), "hang"),
            task("after", Some(3), "succeed"),
        ],
        finally: vec![task("cleanup", None, "succeed")],
        ..RevisionRunSpec::default()
    };
    let id = rt.engine.submit(spec).await.expect("submit").id;
    // Wait until stage 2's long task is running on "Tekton".
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let prs = rt.pipelineruns().await;
            if prs.iter().any(|p| {
                label(p, "task") == "long"
                    && p.status.as_ref().is_some_and(|s| !s.conditions.is_empty())
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the long task starts");
    rt.engine.cancel(&id).await.expect("cancel");
    let record = rt.finish(&id).await;
    assert_eq!(record.state, RunState::Cancelled, "{:#?}", record.scheduler);
    assert_eq!(
        status_of(&record, "unit"),
        (TaskStatus::Succeeded, 2),
        "failed once, retried"
    );
    assert_eq!(
        status_of(&record, "optional").0,
        TaskStatus::Failed,
        "allowed to fail: stage 2 still started"
    );
    assert_eq!(status_of(&record, "image").0, TaskStatus::Succeeded);
    assert_eq!(status_of(&record, "long").0, TaskStatus::Cancelled);
    assert_eq!(status_of(&record, "after").0, TaskStatus::Skipped);
    assert_eq!(
        status_of(&record, "cleanup").0,
        TaskStatus::Succeeded,
        "finally still runs"
    );
    let prs = rt.pipelineruns().await;
    let long = prs
        .iter()
        .find(|p| label(p, "task") == "long")
        .expect("long's PipelineRun");
    assert_eq!(
        long.spec.status.as_deref(),
        Some("Cancelled"),
        "cancelled by patching spec.status"
    );
    assert_eq!(
        long.status.as_ref().unwrap().conditions[0]
            .reason
            .as_deref(),
        Some("Cancelled")
    );
    assert!(
        prs.iter().all(|p| label(p, "task") != "after"),
        "a skipped task never gets a PipelineRun"
    );
    assert_eq!(
        prs.iter().filter(|p| label(p, "task") == "unit").count(),
        2,
        "one PipelineRun per attempt"
    );
    rt.stop().await;
}

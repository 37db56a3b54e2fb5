//! Task logs of Tekton attempts, read over loopback HTTP through kube's
//! client from the Kubernetes-API emulator (which serves pod logs):
//! followed live from the PipelineRun's pod (steps in order, named
//! `pipelineTask/step`) to the attempt's end, archived in the store when
//! the attempt ends, and read from that archive once housekeeping deleted
//! the PipelineRun and its pods.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stagetime_core::backend::{Backend, Housekeeping};
use stagetime_core::engine::{Engine, EngineConfig};
use stagetime_core::logs::{CaptureMode, LiveFirstLogSource, LogCapture, LogStream};
use stagetime_core::memory::MemoryStore;
use stagetime_core::spec::{PipelineSpec, RevisionRunSpec, TaskSpec};
use stagetime_core::store::Store;
use stagetime_core::{ErrorKind, LogChunk, LogQuery, LogSource, RunState};
use stagetime_kube::naming::pipelinerun_name;
use stagetime_kube::types::PipelineRun;
use stagetime_kube::{TektonBackend, TektonLogSource};
use support::{config, emulator, namespace};

async fn collect(stream: LogStream) -> Vec<LogChunk> {
    // A guard against a hang, not a timing assertion.
    tokio::time::timeout(
        Duration::from_secs(60),
        stream.map(|c| c.unwrap()).collect(),
    )
    .await
    .expect("the log stream ends")
}

fn lines(chunks: &[LogChunk]) -> Vec<String> {
    chunks
        .iter()
        .flat_map(|c| {
            let step = c.step.clone().unwrap_or_default();
            c.text
                .lines()
                .map(move |l| format!("{}#{} {step}: {l}", c.task, c.attempt))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tekton_logs_are_followed_from_the_pods_then_read_from_the_archive() {
    let Some(emu) = tokio::task::spawn_blocking(emulator).await.unwrap() else {
        return;
    };
    let ns = namespace();
    let client = emu.client(&ns);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let tekton = TektonBackend::new(client.clone(), config(&ns));
    let pods_source = Arc::new(TektonLogSource::new(client.clone(), Some(ns.clone())));
    let backend = LogCapture::new(
        Arc::new(tekton.clone()),
        Arc::clone(&store),
        Arc::clone(&pods_source) as Arc<dyn LogSource>,
        CaptureMode::AtEnd,
        1 << 20,
    );
    let engine = Arc::new(
        Engine::new(Arc::clone(&store), Arc::new(backend)).with_config(EngineConfig {
            claim_wait: Duration::from_millis(100),
            ..EngineConfig::default()
        }),
    );
    let running = engine.spawn();
    let spec = RevisionRunSpec::new("logs", "c0ffee").task(TaskSpec {
        name: "build".into(),
        pipeline: Some(PipelineSpec {
            pipeline_ref: Some("build".into()),
            ..PipelineSpec::default()
        }),
        ..TaskSpec::default()
    });
    let run = engine.submit(spec).await.unwrap().id;
    let name = pipelinerun_name(run.as_str(), "build", 1);

    // Play Tekton: the PipelineRun appears, its TaskRun's pod runs two steps.
    let prs: Api<PipelineRun> = Api::namespaced(client.clone(), &ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while prs.get_opt(&name).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no PipelineRun");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = format!("{name}-compile-pod");
    let state = |make: serde_json::Value, phase: &str| {
        json!({"phase": phase, "containerStatuses": [
            {"name": "step-fetch", "ready": false, "restartCount": 0, "image": "git", "imageID": "",
             "state": {"terminated": {"exitCode": 0}}},
            {"name": "step-make", "ready": true, "restartCount": 0, "image": "gcc", "imageID": "",
             "state": make},
        ]})
    };
    let created: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "labels": {
            "tekton.dev/pipelineRun": name, "tekton.dev/pipelineTask": "compile"}},
        "spec": {"containers": [{"name": "step-fetch", "image": "git"}, {"name": "step-make", "image": "gcc"}]},
        "status": state(json!({"running": {}}), "Running"),
    }))
    .unwrap();
    pods.create(&PostParams::default(), &created).await.unwrap();
    emu.append_pod_log(&ns, &pod, "step-fetch", "cloning\n")
        .await;
    emu.append_pod_log(&ns, &pod, "step-make", "cc main.c\n")
        .await;

    // Follow the run while its step runs, through the live-first source.
    let logs = LiveFirstLogSource::new(Arc::clone(&store), pods_source.clone());
    let follower = logs
        .open(LogQuery {
            follow: true,
            ..LogQuery::run(run.clone())
        })
        .await
        .unwrap();
    let followed = tokio::spawn(collect(follower));
    tokio::time::sleep(Duration::from_millis(300)).await;
    emu.append_pod_log(&ns, &pod, "step-make", "linking\n")
        .await;
    pods.patch_status(
        &pod,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": state(json!({"terminated": {"exitCode": 0}}), "Succeeded")}),
        ),
    )
    .await
    .unwrap();
    prs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Succeeded", "status": "True",
            "reason": "Succeeded", "message": "done", "lastTransitionTime": "2024-01-13T13:40:36Z"}],
            "completionTime": "2024-01-13T13:40:36Z"}})),
    )
    .await
    .unwrap();
    let live = vec![
        "build#1 compile/fetch: cloning".to_string(),
        "build#1 compile/make: cc main.c".to_string(),
        "build#1 compile/make: linking".to_string(),
    ];
    assert_eq!(lines(&followed.await.unwrap()), live, "followed to the end");
    let record = tokio::time::timeout(Duration::from_secs(60), engine.wait_finished(&run))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state, RunState::Succeeded);

    // With per-repository namespaces the PipelineRun may be in any of them:
    // a source whose first namespace has none finds it in the next.
    let elsewhere =
        TektonLogSource::new(client.clone(), Some("elsewhere".into())).also_in([ns.clone()]);
    let found = elsewhere
        .open(LogQuery {
            task: Some("build".into()),
            attempt: Some(1),
            ..LogQuery::run(run.clone())
        })
        .await
        .unwrap();
    assert_eq!(
        lines(&collect(found).await),
        live,
        "found in the next namespace"
    );

    // Housekeeping deletes the PipelineRun (the cluster's garbage collector
    // its pods): the archive answers, steps kept as line prefixes.
    let report = tekton
        .housekeeping(&Housekeeping {
            ttl: Duration::ZERO,
            keep_last: 0,
            now_ms: u64::MAX / 2,
        })
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 1, "{report:?}");
    pods.delete(&pod, &DeleteParams::default()).await.unwrap();
    assert!(
        prs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let gone = pods_source
        .open(LogQuery {
            attempt: Some(1),
            ..LogQuery::task(run.clone(), "build")
        })
        .await
        .err()
        .expect("nothing left in the cluster");
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
    let archived = collect(logs.open(LogQuery::run(run.clone())).await.unwrap()).await;
    assert_eq!(
        lines(&archived),
        vec![
            "build#1 : [compile/fetch] cloning".to_string(),
            "build#1 : [compile/make] cc main.c".to_string(),
            "build#1 : [compile/make] linking".to_string(),
        ]
    );
    running.shutdown().await.unwrap();
}

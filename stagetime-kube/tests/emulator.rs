//! TektonBackend against the Kubernetes-API emulator (kmock, over loopback
//! HTTP) with a simulated Tekton controller: the backend conformance suite,
//! restart-and-reconcile, deletion before the end, watch expiry (410),
//! adoption rules and housekeeping.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use stagetime_core::backend::{
    Backend, Housekeeping, LaunchKey, LaunchRequest, Observation, RunMeta,
};
use stagetime_core::spec::{PipelineSpec, TaskSpec};
use stagetime_core::testkit::{BackendHarness, TaskBehaviour, unique};
use stagetime_core::{AttemptOutcome, ErrorKind, RunId};
use stagetime_kube::types::PipelineRun;
use stagetime_kube::{TektonBackend, render_pipelinerun};
use support::{Controller, Emulator, config, emulator, namespace, outcome_params};

struct KubeHarness {
    emu: &'static Emulator,
    ns: String,
    _controller: Controller,
}

#[async_trait]
impl BackendHarness for KubeHarness {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(TektonBackend::new(
            self.emu.client(&self.ns),
            config(&self.ns),
        ))
    }

    fn task(&self, name: &str, behaviour: TaskBehaviour) -> TaskSpec {
        let outcome = match behaviour {
            TaskBehaviour::Succeed => "succeed",
            TaskBehaviour::Fail => "fail",
            TaskBehaviour::Hang => "hang",
        };
        pipeline_task(name, outcome)
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(20)
    }
}

fn pipeline_task(name: &str, outcome: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        pipeline: Some(PipelineSpec {
            pipeline_ref: Some("simulated".into()),
            params: outcome_params(outcome),
            ..PipelineSpec::default()
        }),
        ..TaskSpec::default()
    }
}

async fn shared_emulator() -> Option<&'static Emulator> {
    tokio::task::spawn_blocking(emulator)
        .await
        .expect("emulator start")
}

async fn harness() -> Option<Arc<dyn BackendHarness>> {
    let emu = shared_emulator().await?;
    let ns = namespace();
    let controller = Controller::start(emu.client(&ns), &ns);
    Some(Arc::new(KubeHarness {
        emu,
        ns,
        _controller: controller,
    }))
}

stagetime_core::backend_conformance_tests!(harness());

/// One namespace with a controller and a backend.
struct World {
    emu: &'static Emulator,
    ns: String,
    backend: TektonBackend,
    _controller: Controller,
}

impl World {
    async fn new() -> Option<World> {
        let emu = shared_emulator().await?;
        let ns = namespace();
        Some(World {
            emu,
            backend: TektonBackend::new(emu.client(&ns), config(&ns)),
            _controller: Controller::start(emu.client(&ns), &ns),
            ns,
        })
    }

    fn api(&self) -> Api<PipelineRun> {
        Api::namespaced(self.emu.client(&self.ns), &self.ns)
    }
}

fn request(run: &RunId, task: &str, outcome: &str, attempt: u32) -> LaunchRequest {
    LaunchRequest {
        key: LaunchKey {
            run: run.clone(),
            task: task.into(),
            attempt,
        },
        run: RunMeta {
            repo: "demo".into(),
            commit: "4f1".into(),
            ..RunMeta::default()
        },
        task: pipeline_task(task, outcome),
        stage: Some(0),
        is_finally: false,
        timeout: None,
    }
}

/// An observation stream that keeps what it saw, so waiting for one attempt
/// never drops another's outcome that arrived first.
struct Obs {
    stream: BoxStream<'static, Observation>,
    seen: Vec<Observation>,
}

impl Obs {
    fn new(stream: BoxStream<'static, Observation>) -> Self {
        Obs {
            stream,
            seen: Vec::new(),
        }
    }
}

async fn next_for(obs: &mut Obs, key: &LaunchKey) -> AttemptOutcome {
    if let Some(pos) = obs.seen.iter().position(|o| o.key == *key) {
        return obs.seen.remove(pos).outcome;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let o = obs
                .stream
                .next()
                .await
                .expect("the observation stream goes on");
            if o.key == *key {
                return o.outcome;
            }
            obs.seen.push(o);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no outcome for {key} within 20 s"))
}

/// Waits until a watch request with the managed selector reached the emulator for `ns`.
async fn wait_for_watch(emu: &Emulator, ns: &str) {
    let path = format!("/apis/tekton.dev/v1/namespaces/{ns}/pipelineruns");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let seen = emu.requests().await.iter().any(|r| {
                r["path"] == path.as_str()
                    && r["query"]["watch"] == "true"
                    && r["query"]["labelSelector"] == "stagetime/managed-by=stagetime"
            });
            if seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the backend's watch starts within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_reconcile() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("restart")).unwrap();
    let mut obs = Obs::new(w.backend.observe());
    let ok = request(&run, "ok", "succeed", 1);
    let bad = request(&run, "bad", "timeout", 1);
    let long = request(&run, "long", "hang", 1);
    for r in [&ok, &bad, &long] {
        assert!(w.backend.launch(r.clone()).await.unwrap().created);
    }
    assert_eq!(next_for(&mut obs, &ok.key).await, AttemptOutcome::Succeeded);
    assert!(matches!(
        next_for(&mut obs, &bad.key).await,
        AttemptOutcome::TimedOut { .. }
    ));

    // A new process: a new client, a new backend, nothing in memory.
    let restarted = TektonBackend::new(w.emu.client(&w.ns), config(&w.ns));
    let mut found = restarted.reconcile(&run).await.unwrap();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    let tasks: Vec<&str> = found.iter().map(|o| o.key.task.as_str()).collect();
    assert_eq!(
        tasks,
        ["bad", "ok"],
        "finished ones only, the hanging one is still running"
    );
    assert!(
        matches!(&found[0].outcome, AttemptOutcome::TimedOut { message } if message.contains("PipelineRunTimeout"))
    );
    // Relaunching after the restart adopts instead of creating a second PipelineRun.
    assert!(!restarted.launch(long.clone()).await.unwrap().created);
    let all = w.api().list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 3, "never two PipelineRuns for one attempt");
    // The restarted backend's watch reports what ends from now on, and the
    // initial list reports what already ended.
    let mut obs2 = Obs::new(restarted.observe());
    assert_eq!(
        next_for(&mut obs2, &ok.key).await,
        AttemptOutcome::Succeeded
    );
    restarted.cancel(&long.key).await.unwrap();
    assert!(matches!(
        next_for(&mut obs2, &long.key).await,
        AttemptOutcome::Cancelled { .. }
    ));
    assert!(
        matches!(
            next_for(&mut obs, &long.key).await,
            AttemptOutcome::Cancelled { .. }
        ),
        "the first backend sees it too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_before_finishing_is_lost() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("del")).unwrap();
    let mut obs = Obs::new(w.backend.observe());
    let req = request(&run, "doomed", "hang", 1);
    let launched = w.backend.launch(req.clone()).await.unwrap();
    // Once the backend's watch is open, the object is in its list or in the
    // history after it; then delete it behind the backend's back.
    wait_for_watch(w.emu, &w.ns).await;
    w.api()
        .delete(&launched.handle, &DeleteParams::default())
        .await
        .unwrap();
    match next_for(&mut obs, &req.key).await {
        AttemptOutcome::Lost { message } => {
            assert!(message.contains("deleted before it finished"), "{message}")
        }
        other => panic!("expected a lost attempt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_expiry_relists_without_losing_outcomes() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("gone")).unwrap();
    let mut obs = Obs::new(w.backend.observe());
    let a = request(&run, "a", "hang", 1);
    let b = request(&run, "b", "hang", 1);
    w.backend.launch(a.clone()).await.unwrap();
    w.backend.launch(b.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server forgets its history and drops every watch: resuming from the
    // old resourceVersion gets 410 Expired, and the watcher must re-list.
    w.emu.expire().await;
    w.backend.cancel(&a.key).await.unwrap();
    assert!(matches!(
        next_for(&mut obs, &a.key).await,
        AttemptOutcome::Cancelled { .. }
    ));
    w.emu.expire().await;
    w.backend.cancel(&b.key).await.unwrap();
    assert!(matches!(
        next_for(&mut obs, &b.key).await,
        AttemptOutcome::Cancelled { .. }
    ));
    let log = w.emu.requests().await;
    let relists = log
        .iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["path"] == format!("/apis/tekton.dev/v1/namespaces/{}/pipelineruns", w.ns)
                && r["query"].get("watch").is_none()
                && r["query"]["labelSelector"] == "stagetime/managed-by=stagetime"
        })
        .count();
    assert!(
        relists >= 2,
        "the watcher re-listed after expiry ({relists} lists)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_are_not_adopted() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("foreign")).unwrap();
    let req = request(&run, "x", "hang", 1);
    let mut pr = render_pipelinerun(&req, &config(&w.ns)).unwrap();
    pr.metadata.labels = Some([("app".to_string(), "someone-else".to_string())].into());
    w.api().create(&PostParams::default(), &pr).await.unwrap();
    let err = w.backend.launch(req.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(
        err.to_string().contains(&TektonBackend::name_of(&req.key)),
        "{err}"
    );
    // Cancel leaves a foreign object alone.
    w.backend.cancel(&req.key).await.unwrap();
    let still = w
        .api()
        .get(&TektonBackend::name_of(&req.key))
        .await
        .unwrap();
    assert_eq!(still.spec.status, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_deletes_old_finished_runs_in_the_background() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("hk")).unwrap();
    let mut obs = Obs::new(w.backend.observe());
    let mut keys = Vec::new();
    for i in 0..3 {
        let r = request(&run, &format!("t{i}"), "succeed", 1);
        w.backend.launch(r.clone()).await.unwrap();
        keys.push(r.key);
    }
    let running = request(&run, "running", "hang", 1);
    w.backend.launch(running.clone()).await.unwrap();
    for k in &keys {
        assert_eq!(next_for(&mut obs, k).await, AttemptOutcome::Succeeded);
    }
    let policy = Housekeeping {
        ttl: Duration::from_secs(60),
        keep_last: 1,
        now_ms: u64::MAX / 2,
    };
    let report = w.backend.housekeeping(&policy).await.unwrap();
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    let left = w.api().list(&ListParams::default()).await.unwrap();
    assert_eq!(
        left.items.len(),
        2,
        "the newest finished one and the running one stay"
    );
    assert!(
        left.items
            .iter()
            .any(|p| p.metadata.name.as_deref()
                == Some(TektonBackend::name_of(&running.key).as_str()))
    );
    let deletes: Vec<_> = w
        .emu
        .requests()
        .await
        .into_iter()
        .filter(|r| r["method"] == "DELETE" && r["path"].as_str().unwrap_or("").contains(&w.ns))
        .collect();
    assert_eq!(deletes.len(), 2);
    for d in deletes {
        let body: serde_json::Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["propagationPolicy"], "Background", "{d}");
    }
    // Idempotent: nothing more to do.
    assert!(
        w.backend
            .housekeeping(&policy)
            .await
            .unwrap()
            .deleted
            .is_empty()
    );
    // Deleting finished runs is not reported as a failure of anything.
    assert!(
        obs.seen.is_empty(),
        "unexpected observations: {:?}",
        obs.seen
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), obs.stream.next()).await;
    assert!(
        quiet.is_err(),
        "no observation from housekeeping: {quiet:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_launches_of_one_attempt_create_one_pipelinerun() {
    let Some(w) = World::new().await else { return };
    let run = RunId::new(unique("race")).unwrap();
    let req = request(&run, "racy", "hang", 1);
    let other = TektonBackend::new(w.emu.client(&w.ns), config(&w.ns));
    let mut launches = Vec::new();
    for i in 0..6 {
        let b = if i % 2 == 0 {
            w.backend.clone()
        } else {
            other.clone()
        };
        let r = req.clone();
        launches.push(tokio::spawn(async move { b.launch(r).await }));
    }
    let mut created = 0;
    let mut handles = std::collections::BTreeSet::new();
    for l in launches {
        let launched = l
            .await
            .unwrap()
            .expect("every launch succeeds (create or adopt)");
        created += usize::from(launched.created);
        handles.insert(launched.handle);
    }
    assert_eq!(created, 1, "exactly one launch created it");
    assert_eq!(handles.len(), 1);
    assert_eq!(
        w.api()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

/// Issue 14: every PipelineRun landed in one namespace. A run's repository
/// now picks its namespace (`repo_namespaces`, the rest in the default one);
/// observe, cancel, reconcile (from a restarted backend) and housekeeping
/// find each PipelineRun where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_repository_runs_in_its_namespace() {
    let Some(emu) = shared_emulator().await else {
        return;
    };
    let (default_ns, team_ns) = (namespace(), namespace());
    let _controllers = [
        Controller::start(emu.client(&default_ns), &default_ns),
        Controller::start(emu.client(&team_ns), &team_ns),
    ];
    let mut cfg = config(&default_ns);
    cfg.repo_namespaces = [("team-repo".to_string(), team_ns.clone())].into();
    let backend = TektonBackend::new(emu.client(&default_ns), cfg.clone());
    let mut obs = Obs::new(backend.observe());
    let run = RunId::new(unique("ns")).unwrap();
    let mut team = request(&run, "team", "succeed", 1);
    team.run.repo = "team-repo".into();
    let mut hanging = request(&run, "hanging", "hang", 1);
    hanging.run.repo = "team-repo".into();
    let other = request(&run, "other", "succeed", 1);
    for r in [&team, &hanging, &other] {
        assert!(backend.launch(r.clone()).await.unwrap().created);
    }
    let names = |ns: &str| {
        let api: Api<PipelineRun> = Api::namespaced(emu.client(ns), ns);
        async move {
            let mut names: Vec<String> = api
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            names
        }
    };
    let mut in_team = vec![
        TektonBackend::name_of(&hanging.key),
        TektonBackend::name_of(&team.key),
    ];
    in_team.sort();
    assert_eq!(names(&team_ns).await, in_team);
    assert_eq!(
        names(&default_ns).await,
        [TektonBackend::name_of(&other.key)]
    );
    assert_eq!(
        next_for(&mut obs, &team.key).await,
        AttemptOutcome::Succeeded
    );
    assert_eq!(
        next_for(&mut obs, &other.key).await,
        AttemptOutcome::Succeeded
    );

    // Cancel finds the attempt in its repository's namespace.
    backend.cancel(&hanging.key).await.unwrap();
    assert!(matches!(
        next_for(&mut obs, &hanging.key).await,
        AttemptOutcome::Cancelled { .. }
    ));

    // A restarted backend reconciles the run across both namespaces.
    let restarted = TektonBackend::new(emu.client(&default_ns), cfg);
    let mut found: Vec<String> = restarted
        .reconcile(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.task)
        .collect();
    found.sort();
    assert_eq!(found, ["hanging", "other", "team"]);

    // Housekeeping covers both namespaces.
    let policy = Housekeeping {
        ttl: Duration::from_secs(60),
        keep_last: 0,
        now_ms: u64::MAX / 2,
    };
    let report = restarted.housekeeping(&policy).await.unwrap();
    assert_eq!(report.deleted.len(), 3, "{report:?}");
    assert!(names(&team_ns).await.is_empty());
    assert!(names(&default_ns).await.is_empty());
}

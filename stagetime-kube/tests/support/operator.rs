//! The operator's test stack on the emulator: a real redis-server
//! (RedisStore) shared by the operator and an in-process engine with the
//! Tekton backend ("the worker"), plus the simulated Tekton controller.
//! Each stack lives in a namespace of its own; its kube clients mark their
//! requests with the actors `operator`, `worker` and `test`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use stagetime_core::engine::{Engine, EngineConfig};
use stagetime_core::{RunId, RunRecord, Store};
use stagetime_kube::TektonBackend;
use stagetime_kube::crd::{
    PipelineRunTemplate, PipelineRunTemplateSpec, Repo, RepoSpec, RevisionRun, RevisionRunSpec,
    Technology,
};
use stagetime_kube::operator::{Operator, OperatorConfig, OperatorMetrics};
use stagetime_kube::types::PipelineRun;
use stagetime_redis::{RedisConfig, RedisStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Controller, Emulator, config, emulator, namespace};

/// A running operator + worker + simulated Tekton in one namespace.
pub struct Stack {
    /// The emulator.
    pub emu: &'static Emulator,
    /// The namespace.
    pub ns: String,
    /// A client for the test's own calls (actor `test`).
    pub client: kube::Client,
    /// The shared store.
    pub store: Arc<dyn Store>,
    /// The operator's metrics.
    pub metrics: OperatorMetrics,
    stops: Vec<oneshot::Sender<()>>,
    engine_task: Option<JoinHandle<stagetime_core::Result<()>>>,
    operator_task: Option<JoinHandle<stagetime_core::Result<()>>>,
    _tekton: Controller,
}

impl Stack {
    /// Starts everything; `None` when the emulator or redis-server cannot run
    /// (after a loud SKIPPED line).
    pub async fn start() -> Option<Stack> {
        let emu = tokio::task::spawn_blocking(emulator)
            .await
            .expect("emulator start")?;
        let redis = tokio::task::spawn_blocking(super::redis::shared)
            .await
            .expect("redis start")?;
        let ns = namespace();
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(RedisConfig::new(redis.url()).with_prefix(ns.clone()))
                .await
                .expect("connect to redis"),
        );
        let tekton = Controller::start(emu.client(&ns), &ns);
        let backend = Arc::new(TektonBackend::new(
            emu.client_as(&ns, "worker"),
            config(&ns),
        ));
        let engine = Arc::new(
            Engine::new(Arc::clone(&store), backend).with_config(EngineConfig {
                claim_wait: Duration::from_millis(100),
                ..EngineConfig::default()
            }),
        );
        let (stop_engine, engine_stopped) = oneshot::channel::<()>();
        let engine_task = tokio::spawn(Arc::clone(&engine).run(async move {
            let _ = engine_stopped.await;
        }));
        let metrics = OperatorMetrics::default();
        let operator = Arc::new(
            Operator::new(
                emu.client_as(&ns, "operator"),
                Arc::clone(&store),
                OperatorConfig {
                    namespace: Some(ns.clone()),
                    poll_interval: Duration::from_millis(150),
                    backoff_base: Duration::from_millis(100),
                    backoff_max: Duration::from_secs(1),
                    ..OperatorConfig::default()
                },
            )
            .with_metrics(metrics.clone()),
        );
        let (stop_operator, operator_stopped) = oneshot::channel::<()>();
        let operator_task = tokio::spawn(operator.run(async move {
            let _ = operator_stopped.await;
        }));
        Some(Stack {
            emu,
            client: emu.client_as(&ns, "test"),
            ns,
            store,
            metrics,
            stops: vec![stop_engine, stop_operator],
            engine_task: Some(engine_task),
            operator_task: Some(operator_task),
            _tekton: tekton,
        })
    }

    /// RevisionRuns of the namespace.
    pub fn revision_runs(&self) -> Api<RevisionRun> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// PipelineRuns of the namespace.
    pub async fn pipelineruns(&self) -> Vec<PipelineRun> {
        Api::<PipelineRun>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list pipelineruns")
            .items
    }

    /// Creates a Repo.
    pub async fn repo(&self, name: &str, branch: &str) {
        let repo = Repo::new(
            name,
            RepoSpec {
                name: name.into(),
                organization: "stuttgart-things".into(),
                branch: branch.into(),
            },
        );
        Api::<Repo>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &repo)
            .await
            .expect("create repo");
    }

    /// Creates a PipelineRunTemplate with a git resolver and these params (`k=v`).
    pub async fn template(&self, name: &str, stage: i64, params: &[&str]) {
        let t = PipelineRunTemplate::new(
            name,
            PipelineRunTemplateSpec {
                stage,
                resolver: vec![
                    "url=https://git.example.com/pipelines.git".into(),
                    "revision=main".into(),
                    format!("pathInRepo={name}.yaml"),
                ],
                params: params.iter().map(|s| s.to_string()).collect(),
                vclaims: vec!["source=standard;ReadWriteOnce;20Mi".into()],
                listparams: vec![],
            },
        );
        Api::<PipelineRunTemplate>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &t)
            .await
            .expect("create template");
    }

    /// The Repo `app` (branch `main`) and two templates: `quick` (stage 0,
    /// succeeds) and `long` (stage 1, hangs until cancelled).
    pub async fn app_with_quick_and_long(&self) {
        self.repo("app", "main").await;
        self.template("quick", 0, &["outcome=succeed"]).await;
        self.template("long", 1, &["outcome=hang"]).await;
    }

    /// Creates a RevisionRun.
    pub async fn revision_run(
        &self,
        name: &str,
        revision: Option<&str>,
        techs: Vec<Technology>,
    ) -> RevisionRun {
        let rr = RevisionRun::new(
            name,
            RevisionRunSpec {
                repository: "app".into(),
                revision: revision.map(Into::into),
                technologies: techs,
            },
        );
        self.revision_runs()
            .create(&PostParams::default(), &rr)
            .await
            .expect("create revisionrun")
    }

    /// The run of `id` in the shared store.
    pub async fn run(&self, id: &str) -> RunRecord {
        self.store
            .load_run(&RunId::new(id).expect("run id"))
            .await
            .expect("load run")
    }

    /// Stops the operator and the engine; both must stop cleanly.
    pub async fn stop(mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for task in [self.operator_task.take(), self.engine_task.take()]
            .into_iter()
            .flatten()
        {
            let r = tokio::time::timeout(Duration::from_secs(20), task).await;
            assert!(matches!(r, Ok(Ok(Ok(())))), "stops cleanly: {r:?}");
        }
    }
}

/// The value of the label `stagetime/<k>` of a PipelineRun (`""` when unset).
pub fn label<'a>(pr: &'a PipelineRun, k: &str) -> &'a str {
    pr.labels()
        .get(&format!("stagetime/{k}"))
        .map_or("", String::as_str)
}

/// A technology of `kind` named `id` (stage 99: the template's).
pub fn tech(id: &str, kind: &str) -> Technology {
    Technology {
        id: id.into(),
        kind: kind.into(),
        ..Technology::default()
    }
}

/// Polls `probe` every 50 ms until it gives a value; panics naming `what`
/// after a generous 45 s.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

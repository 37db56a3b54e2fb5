//! The reconciler: RevisionRuns → runs in the shared store → status.
//!
//! For each RevisionRun (kube-runtime [`Controller`]): resolve its Repo and
//! PipelineRunTemplates, build the run ([`super::build_run_spec`]), submit it
//! through [`RunControl`] under an id derived from the object's namespace,
//! name, uid and generation (so reconciling again submits nothing new), and
//! write the status subresource from the run's record — again and again
//! while the run is active. The operator runs no task itself: workers
//! sharing the store do. A missing Repo or template, or an invalid override,
//! becomes the `Ready=False` condition with its reason and a requeue with
//! backoff. The finalizer [`FINALIZER`] cancels the run when the RevisionRun
//! is deleted. Repo and template changes re-trigger the RevisionRuns that
//! name them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use stagetime_core::control::{RunControl, SubmitOptions, Submitted};
use stagetime_core::view::RunView;
use stagetime_core::{Error, ErrorKind, RunId, Store};
use tracing::{info, warn};

use super::merge::{RunIdentity, build_run_spec, missing_templates};
use super::status::{error_status, phase, reason, status_from_view};
use crate::crd::{PipelineRunTemplate, Repo, RevisionRun, RevisionRunStatus};
use crate::error::classify_resource;

/// The finalizer the operator puts on RevisionRuns.
pub const FINALIZER: &str = "stagetime.sthings.tiab.ssc.sva.de/cancel-run";

/// A finished run's status is refreshed this many poll intervals apart
/// (a rerun through the API may revive it).
const FINISHED_POLL_FACTOR: u32 = 12;

/// How the operator behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// Namespace to watch (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Label/annotation prefix of the Tekton backend (`stagetime`): the
    /// owner annotation is `<prefix>/owner`.
    pub label_prefix: String,
    /// How often the status of an active run is refreshed.
    pub poll_interval: Duration,
    /// First requeue delay after a failure; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Cap of that delay.
    pub backoff_max: Duration,
}

impl Default for OperatorConfig {
    /// All namespaces, prefix `stagetime`, status every 5 s, backoff 2 s doubling to 5 min.
    fn default() -> Self {
        OperatorConfig {
            namespace: None,
            label_prefix: "stagetime".to_string(),
            poll_interval: Duration::from_secs(5),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl OperatorConfig {
    /// The delay before retrying after `failures` consecutive failures (≥ 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Label set of [`OperatorMetrics::reconciles`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `submitted`, `updated`, `unchanged`, `expired` (a finished run past the
    /// store's retention: its status is kept as it is), `invalid`, `error`,
    /// `cleanup`.
    pub result: String,
}

/// The operator's Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct OperatorMetrics {
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Runs submitted (new runs only).
    pub submitted: Counter,
    /// Reconcile errors (API or store failures; retried with backoff).
    pub errors: Counter,
}

impl OperatorMetrics {
    /// Registers the metrics (`stagetime_operator_*`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "stagetime_operator_reconciles",
            "RevisionRun reconciles by result",
            self.reconciles.clone(),
        );
        registry.register(
            "stagetime_operator_runs_submitted",
            "Runs submitted for RevisionRuns",
            self.submitted.clone(),
        );
        registry.register(
            "stagetime_operator_reconcile_errors",
            "Reconciles that failed (retried with backoff)",
            self.errors.clone(),
        );
    }

    fn count(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

/// The reconciler's shared state.
pub struct Operator {
    client: Client,
    control: RunControl,
    config: OperatorConfig,
    metrics: OperatorMetrics,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Operator {
    /// An operator submitting to `store` and talking to the cluster through `client`.
    pub fn new(client: Client, store: Arc<dyn Store>, config: OperatorConfig) -> Self {
        Operator {
            client,
            control: RunControl::new(store),
            config,
            metrics: OperatorMetrics::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// An operator with a client from `KUBECONFIG` (or `~/.kube/config`) or,
    /// inside a pod, the in-cluster configuration.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when neither configuration is usable.
    pub async fn try_default(store: Arc<dyn Store>, config: OperatorConfig) -> Result<Self, Error> {
        let client = Client::try_default().await.map_err(|e| {
            Error::unavailable(
                "kubernetes",
                format!("no usable kubeconfig or in-cluster config: {e}"),
            )
        })?;
        Ok(Self::new(client, store, config))
    }

    /// Replaces the metrics (e.g. with ones registered in a registry).
    pub fn with_metrics(mut self, metrics: OperatorMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics.
    pub fn metrics(&self) -> &OperatorMetrics {
        &self.metrics
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        self.config.backoff(*n)
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Runs the controller until `shutdown` resolves (then finishes the
    /// reconciles in flight).
    ///
    /// # Errors
    /// None today: reconcile and watch errors are logged, counted and
    /// retried; the `Result` leaves room for start-up checks.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let client = self.client.clone();
        let (runs, repos, templates) = match &self.config.namespace {
            Some(ns) => (
                Api::<RevisionRun>::namespaced(client.clone(), ns),
                Api::<Repo>::namespaced(client.clone(), ns),
                Api::<PipelineRunTemplate>::namespaced(client.clone(), ns),
            ),
            None => (
                Api::<RevisionRun>::all(client.clone()),
                Api::<Repo>::all(client.clone()),
                Api::<PipelineRunTemplate>::all(client.clone()),
            ),
        };
        let controller = Controller::new(runs, watcher::Config::default());
        let store = controller.store();
        let by_repo = store.clone();
        let by_template = store;
        info!(namespace = ?self.config.namespace, "operator started");
        controller
            .watches(repos, watcher::Config::default(), move |repo: Repo| {
                let (ns, name) = (repo.namespace(), repo.name_any());
                by_repo
                    .state()
                    .into_iter()
                    .filter(|rr| rr.namespace() == ns && rr.spec.repository == name)
                    .map(|rr| ObjectRef::from_obj(&*rr))
                    .collect::<Vec<_>>()
            })
            .watches(
                templates,
                watcher::Config::default(),
                move |t: PipelineRunTemplate| {
                    let (ns, name) = (t.namespace(), t.name_any());
                    by_template
                        .state()
                        .into_iter()
                        .filter(|rr| {
                            rr.namespace() == ns
                                && rr.spec.technologies.iter().any(|x| x.kind == name)
                        })
                        .map(|rr| ObjectRef::from_obj(&*rr))
                        .collect::<Vec<_>>()
                },
            )
            .graceful_shutdown_on(shutdown)
            .run(reconcile, error_policy, Arc::clone(&self))
            .for_each(|res| async move {
                if let Err(e) = res {
                    warn!(error = %e, "operator: reconcile or watch failed");
                }
            })
            .await;
        info!("operator stopped");
        Ok(())
    }

    async fn apply(&self, rr: Arc<RevisionRun>) -> Result<Action, Error> {
        let id = RunIdentity::of(&rr)?;
        let key = format!("{}/{}", id.namespace, id.name);
        let previous = rr.status.as_ref();
        if previous.and_then(|s| s.run_id.as_deref()) == Some(id.run_id.as_str()) {
            // This generation was submitted: follow the run.
            match self.control.view(&RunId::new(id.run_id.clone())?).await {
                Ok(run) => return self.follow(&rr, &id, &run).await,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let finished = previous.and_then(|s| s.phase.as_deref()).is_some_and(|p| {
                        [phase::SUCCEEDED, phase::FAILED, phase::CANCELLED].contains(&p)
                    });
                    if finished {
                        // Past the store's retention: the status is the record now.
                        self.metrics.count("expired");
                        self.succeeded(&key);
                        return Ok(Action::await_change());
                    }
                    warn!(revisionrun = %key, run = %id.run_id, "the unfinished run is gone from the store; submitting it again");
                }
                Err(e) => return Err(e),
            }
        }
        // Resolve the Repo and the templates.
        let repo = match self
            .api::<Repo>(&id.namespace)
            .get_opt(&rr.spec.repository)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => {
                let msg = format!(
                    "Repo {:?} not found in namespace {:?}",
                    rr.spec.repository, id.namespace
                );
                return self.refuse(&rr, &key, reason::REPO_NOT_FOUND, &msg).await;
            }
            Err(e) => return Err(classify_resource(e, "get", "repos", &id.namespace)),
        };
        let mut templates = BTreeMap::new();
        let api = self.api::<PipelineRunTemplate>(&id.namespace);
        for kind in rr.spec.technologies.iter().map(|t| t.kind.as_str()) {
            if kind.is_empty() || templates.contains_key(kind) {
                continue;
            }
            match api.get_opt(kind).await {
                Ok(Some(t)) => {
                    templates.insert(kind.to_string(), t);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(classify_resource(
                        e,
                        "get",
                        "pipelineruntemplates",
                        &id.namespace,
                    ));
                }
            }
        }
        let missing = missing_templates(&rr, &templates);
        if !missing.is_empty() {
            let msg = format!(
                "PipelineRunTemplate {} not found in namespace {:?}",
                missing
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                id.namespace
            );
            return self
                .refuse(&rr, &key, reason::TEMPLATE_NOT_FOUND, &msg)
                .await;
        }
        let spec = match build_run_spec(&rr, &repo, &templates, &id, &self.config.label_prefix) {
            Ok(s) => s,
            Err(Error::Invalid(errors)) => {
                let msg = errors.to_string().replace('\n', "; ");
                return self.refuse(&rr, &key, reason::INVALID_SPEC, &msg).await;
            }
            Err(e) => return Err(e),
        };
        // A run of an earlier generation that still runs is superseded.
        if let Some(old) = previous.and_then(|s| s.run_id.as_deref())
            && old != id.run_id
            && let Ok(old) = RunId::new(old)
        {
            match self.control.cancel(&old).await {
                Ok(()) => {
                    info!(revisionrun = %key, run = %old, "cancelled the run of an earlier generation")
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let run_id = RunId::new(id.run_id.clone())?;
        let trusted = SubmitOptions {
            trusted: true,
            ..SubmitOptions::default()
        };
        let submitted = match self.control.submit_with(spec, trusted).await {
            Ok(s) => s,
            Err(Error::Invalid(errors)) => {
                let msg = errors.to_string().replace('\n', "; ");
                return self.refuse(&rr, &key, reason::INVALID_SPEC, &msg).await;
            }
            // This generation was submitted before, from a Repo or templates
            // that have changed since (the status write was lost): the run
            // that exists is this generation's run.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                info!(revisionrun = %key, run = %run_id, "following the run submitted earlier for this generation");
                Submitted {
                    id: run_id,
                    created: false,
                }
            }
            Err(e) => return Err(e),
        };
        if submitted.created {
            self.metrics.submitted.inc();
            info!(revisionrun = %key, run = %submitted.id, "run submitted");
        }
        self.metrics.count("submitted");
        let run = self.control.view(&submitted.id).await?;
        self.follow(&rr, &id, &run).await
    }

    /// Writes the status of `run` (when it changed) and requeues while the run is active.
    async fn follow(
        &self,
        rr: &RevisionRun,
        id: &RunIdentity,
        run: &RunView,
    ) -> Result<Action, Error> {
        let key = format!("{}/{}", id.namespace, id.name);
        let status = status_from_view(run, rr.metadata.generation, rr.status.as_ref(), &now());
        if rr.status.as_ref() != Some(&status) {
            self.write_status(rr, &status).await?;
            self.metrics.count("updated");
        } else {
            self.metrics.count("unchanged");
        }
        self.succeeded(&key);
        Ok(if run.state.is_finished() {
            // Rarely: a rerun through the API revives a finished run.
            Action::requeue(self.config.poll_interval * FINISHED_POLL_FACTOR)
        } else {
            Action::requeue(self.config.poll_interval)
        })
    }

    /// Records why the RevisionRun cannot run, and retries later with backoff.
    async fn refuse(
        &self,
        rr: &RevisionRun,
        key: &str,
        why: &str,
        message: &str,
    ) -> Result<Action, Error> {
        warn!(revisionrun = %key, reason = why, message, "revisionrun not submitted");
        let status = error_status(
            rr.status.as_ref(),
            rr.metadata.generation,
            why,
            message,
            &now(),
        );
        let unchanged = rr.status.as_ref().is_some_and(|s| {
            let strip = |s: &RevisionRunStatus| {
                let mut s = s.clone();
                for c in &mut s.conditions {
                    c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
                }
                s
            };
            strip(s) == strip(&status)
        });
        if !unchanged {
            self.write_status(rr, &status).await?;
        }
        self.metrics.count("invalid");
        Ok(Action::requeue(self.failed(key)))
    }

    async fn write_status(
        &self,
        rr: &RevisionRun,
        status: &RevisionRunStatus,
    ) -> Result<(), Error> {
        let ns = rr.namespace().unwrap_or_default();
        let name = rr.name_any();
        let patch = serde_json::json!({ "status": status_patch(status) });
        self.api::<RevisionRun>(&ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| classify_resource(e, "patch", "revisionruns/status", &ns))?;
        Ok(())
    }

    async fn cleanup(&self, rr: Arc<RevisionRun>) -> Result<Action, Error> {
        let id = RunIdentity::of(&rr)?;
        let key = format!("{}/{}", id.namespace, id.name);
        // The run in the status, and this generation's (in case its status
        // was never written).
        let mut ids: Vec<String> = rr
            .status
            .as_ref()
            .and_then(|s| s.run_id.clone())
            .into_iter()
            .collect();
        if !ids.contains(&id.run_id) {
            ids.push(id.run_id.clone());
        }
        for run in ids {
            let run = RunId::new(run)?;
            match self.control.get(&run).await {
                Ok(record) if !record.state.is_finished() => {
                    self.control.cancel(&run).await?;
                    info!(revisionrun = %key, %run, "revisionrun deleted: run cancelled");
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.succeeded(&key);
        self.metrics.count("cleanup");
        Ok(Action::await_change())
    }
}

/// `status` as a merge patch: fields it leaves out are written as `null`,
/// so that a merge patch removes what an earlier status had (a merge patch
/// replaces arrays whole, so only the top level needs this).
pub fn status_patch(status: &RevisionRunStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for key in [
            "phase",
            "stage",
            "runId",
            "revision",
            "observedGeneration",
            "stages",
            "tasks",
            "conditions",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    v
}

/// One reconcile of `rr` (the finalizer flow around [`Operator`]'s apply and
/// cleanup).
///
/// # Errors
/// API and store failures; the controller retries them
/// with [`error_policy`]'s backoff.
pub async fn reconcile(rr: Arc<RevisionRun>, op: Arc<Operator>) -> Result<Action, Error> {
    let ns = rr.namespace().unwrap_or_default();
    let api: Api<RevisionRun> = Api::namespaced(op.client.clone(), &ns);
    finalizer(&api, FINALIZER, rr, |event| async {
        match event {
            Finalizer::Apply(rr) => op.apply(rr).await,
            Finalizer::Cleanup(rr) => op.cleanup(rr).await,
        }
    })
    .await
    .map_err(|e| {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => {
                classify_resource(e, "patch", "revisionruns", &ns)
            }
            other => Error::unavailable("kubernetes", other),
        }
    })
}

/// Requeue after a failed reconcile: doubling backoff per object.
pub fn error_policy(rr: Arc<RevisionRun>, err: &Error, op: Arc<Operator>) -> Action {
    let key = format!("{}/{}", rr.namespace().unwrap_or_default(), rr.name_any());
    op.metrics.errors.inc();
    op.metrics.count("error");
    let delay = op.failed(&key);
    warn!(revisionrun = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patches_remove_fields_the_new_status_lacks() {
        let status = RevisionRunStatus {
            phase: Some("Error".into()),
            ..RevisionRunStatus::default()
        };
        let patch = status_patch(&status);
        assert_eq!(patch["phase"], "Error");
        assert!(patch["stage"].is_null() && patch.get("stage").is_some());
        assert!(patch.get("tasks").is_some_and(serde_json::Value::is_null));
        let full = status_patch(&RevisionRunStatus {
            stage: Some("1".into()),
            ..status
        });
        assert_eq!(full["stage"], "1");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = OperatorConfig::default();
        assert_eq!(c.backoff(1), Duration::from_secs(2));
        assert_eq!(c.backoff(2), Duration::from_secs(4));
        assert_eq!(c.backoff(9), Duration::from_secs(300));
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(300));
    }
}

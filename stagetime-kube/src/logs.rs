//! [`TektonLogSource`]: task logs read from the Kubernetes API, like
//! `tkn pr logs`: an attempt's PipelineRun → its TaskRuns' pods (in the
//! order they were created) → their step containers (in spec order), each
//! line's chunk naming `pipelineTask/step`; following streams the running
//! step and waits for the pods still to come until the PipelineRun is done.
//!
//! Pods are found by the label Tekton puts on them
//! (`tekton.dev/pipelineRun=<name>`); the PipelineRun by its deterministic
//! name ([`crate::naming::pipelinerun_name`]). RBAC: `get`/`list` on
//! `pipelineruns` (tekton.dev) and `pods`, `get` on `pods/log`.
//!
//! Once housekeeping has deleted the PipelineRun (or its pods), this source
//! answers [`Error::NotFound`]: pair it with the store's archive through
//! [`stagetime_core::logs::LiveFirstLogSource`].

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use stagetime_core::backend::LaunchKey;
use stagetime_core::logs::{
    LineDecoder, LogChunk, LogQuery, LogSource, LogStream, spawn_log_stream,
};
use stagetime_core::{Error, Result};
use tokio::sync::mpsc;

use crate::naming::pipelinerun_name;
use crate::types::PipelineRun;

/// How often a follower looks for new pods and steps.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// The label Tekton puts on a PipelineRun's pods.
const POD_PIPELINERUN_LABEL: &str = "tekton.dev/pipelineRun";
/// The label naming the pod's task within the pipeline.
const POD_PIPELINE_TASK_LABEL: &str = "tekton.dev/pipelineTask";

/// Reads attempts' logs from their PipelineRuns' pods. Answers queries for
/// one attempt (task and attempt given; [`LiveFirstLogSource`] asks so).
///
/// [`LiveFirstLogSource`]: stagetime_core::logs::LiveFirstLogSource
#[derive(Clone)]
pub struct TektonLogSource {
    client: Client,
    namespace: Option<String>,
    /// More namespaces to look in after `namespace` (per-repository ones).
    also: Vec<String>,
}

impl std::fmt::Debug for TektonLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TektonLogSource")
            .field("namespace", &self.namespace)
            .field("also", &self.also)
            .finish_non_exhaustive()
    }
}

impl TektonLogSource {
    /// Reads PipelineRuns of `namespace`, or of every namespace (which
    /// needs cluster-wide `list` on pipelineruns) when `None`.
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Self {
            client,
            namespace,
            also: Vec::new(),
        }
    }

    /// Also looks for PipelineRuns in `namespaces`, after the first one (the
    /// namespaces of [`TektonConfig::repo_namespaces`]); no effect when
    /// reading every namespace.
    ///
    /// [`TektonConfig::repo_namespaces`]: crate::TektonConfig::repo_namespaces
    pub fn also_in<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        for ns in namespaces {
            let ns = ns.into();
            if self.namespace.as_ref() != Some(&ns) && !self.also.contains(&ns) {
                self.also.push(ns);
            }
        }
        self
    }

    /// A source using the current kubeconfig or the in-cluster configuration.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no configuration can be found or the
    /// client cannot be built.
    pub async fn try_default(namespace: Option<String>) -> Result<Self> {
        let client = Client::try_default().await.map_err(|e| {
            Error::unavailable(
                "kubernetes",
                format!("no usable kubeconfig or in-cluster configuration: {e}"),
            )
        })?;
        Ok(Self::new(client, namespace))
    }

    /// The attempt's PipelineRun, wherever it is.
    async fn pipelinerun(&self, key: &LaunchKey) -> Result<PipelineRun> {
        let name = pipelinerun_name(key.run.as_str(), &key.task, key.attempt);
        let apis: Vec<Api<PipelineRun>> = match &self.namespace {
            Some(ns) => std::iter::once(ns)
                .chain(&self.also)
                .map(|ns| Api::namespaced(self.client.clone(), ns))
                .collect(),
            None => vec![Api::all(self.client.clone())],
        };
        for api in apis {
            let found = api
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await
                .map_err(|e| kube_error(e, "list", "pipelineruns"))?;
            if let Some(pr) = found.items.into_iter().next() {
                return Ok(pr);
            }
        }
        Err(Error::not_found(format!("PipelineRun {name} of {key}")))
    }
}

fn kube_error(e: kube::Error, verb: &str, resource: &str) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            Error::not_found(format!("{resource}: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => Error::Forbidden {
            message: format!(
                "{verb} {resource}: {} — RBAC must allow it for reading task logs",
                s.message
            ),
        },
        _ => Error::unavailable("kubernetes", format!("{verb} {resource}: {e}")),
    }
}

/// True when the PipelineRun has ended (its `Succeeded` condition is no
/// longer `Unknown`).
fn done(pr: &PipelineRun) -> bool {
    crate::status::succeeded_condition(pr).is_some_and(|c| c.status != "Unknown")
}

/// A PipelineRun's pods, oldest first.
async fn pods_of(pods: &Api<Pod>, pipelinerun: &str) -> Result<Vec<Pod>> {
    let mut list = pods
        .list(&ListParams::default().labels(&format!("{POD_PIPELINERUN_LABEL}={pipelinerun}")))
        .await
        .map_err(|e| kube_error(e, "list", "pods"))?
        .items;
    list.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    Ok(list)
}

/// The step containers of a pod, in order (Tekton names them `step-<name>`).
fn steps(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| c.name.clone())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Where a container is: not started, running, or terminated.
fn container_state(pod: &Pod, container: &str) -> (bool, bool) {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == container))
        .and_then(|c| c.state.as_ref());
    let started = status.is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    let terminated = status.is_some_and(|s| s.terminated.is_some());
    let pod_over = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    (started || pod_over, terminated || pod_over)
}

/// Streams one step's log into `tx`; false when the reader went away.
async fn stream_step(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    follow: bool,
    tx: &mpsc::Sender<Result<LogChunk>>,
    chunk: &(dyn Fn(String) -> LogChunk + Sync),
) -> Result<bool> {
    let params = LogParams {
        container: Some(container.to_string()),
        follow,
        ..LogParams::default()
    };
    let reader = pods
        .log_stream(pod, &params)
        .await
        .map_err(|e| kube_error(e, "get", "pods/log"))?;
    let mut lines = reader.lines();
    let mut decoder = LineDecoder::default();
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| {
            Error::unavailable(
                "kubernetes",
                format!("reading the log of {pod}/{container}: {e}"),
            )
        })?;
        let mut text = decoder.push(line.as_bytes());
        text.push_str(&decoder.finish());
        text.push('\n');
        if tx.send(Ok(chunk(text))).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[async_trait]
impl LogSource for TektonLogSource {
    async fn open(&self, query: LogQuery) -> Result<LogStream> {
        let (Some(task), Some(attempt)) = (query.task.clone(), query.attempt) else {
            return Err(Error::Unsupported {
                message: "Tekton logs are read one attempt at a time (name the task and attempt)"
                    .into(),
            });
        };
        let key = LaunchKey {
            run: query.run.clone(),
            task,
            attempt,
        };
        let pr = self.pipelinerun(&key).await?;
        let name = pr.name_any();
        let ns = pr.namespace().unwrap_or_else(|| "default".into());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let first = pods_of(&pods, &name).await?;
        if first.is_empty() && (done(&pr) || !query.follow) {
            // Pruned (or not started): nothing to read here.
            return Err(Error::not_found(format!("pods of PipelineRun {ns}/{name}")));
        }
        let this = self.clone();
        let follow = query.follow;
        Ok(spawn_log_stream(move |tx| async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut pending = Some(first);
            loop {
                let listed = match pending.take() {
                    Some(p) => p,
                    None => match pods_of(&pods, &name).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                };
                // The run's state before reading: if it was done then, the
                // pods listed are all there will be.
                let was_done = !follow
                    || match this.pipelinerun(&key).await {
                        Ok(pr) => done(&pr),
                        Err(_) => true,
                    };
                let mut progressed = false;
                for pod in listed {
                    let pod_name = pod.name_any();
                    if seen.contains(&pod_name) {
                        continue;
                    }
                    let task_label = pod
                        .labels()
                        .get(POD_PIPELINE_TASK_LABEL)
                        .cloned()
                        .unwrap_or_else(|| pod_name.clone());
                    for container in steps(&pod) {
                        // Wait for the step to start (a waiting container has no log yet).
                        let mut current = pod.clone();
                        loop {
                            let (started, _) = container_state(&current, &container);
                            if started || !follow {
                                break;
                            }
                            tokio::time::sleep(FOLLOW_POLL).await;
                            if tx.is_closed() {
                                return;
                            }
                            match pods.get_opt(&pod_name).await {
                                Ok(Some(p)) => current = p,
                                Ok(None) => break,
                                Err(e) => {
                                    let _ = tx.send(Err(kube_error(e, "get", "pods"))).await;
                                    return;
                                }
                            }
                        }
                        let step = format!(
                            "{task_label}/{}",
                            container.strip_prefix("step-").unwrap_or(&container)
                        );
                        let chunk = |text: String| LogChunk {
                            task: key.task.clone(),
                            attempt: key.attempt,
                            step: Some(step.clone()),
                            text,
                        };
                        match stream_step(&pods, &pod_name, &container, follow, &tx, &chunk).await {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    seen.insert(pod_name);
                    progressed = true;
                }
                if was_done && !progressed {
                    return;
                }
                if !progressed {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    if tx.is_closed() {
                        return;
                    }
                }
            }
        }))
    }
}

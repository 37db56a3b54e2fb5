//! [`TektonBackend`]: the [`Backend`] that runs each task attempt as a Tekton PipelineRun.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use stagetime_core::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation, Observers,
};
use stagetime_core::{AttemptOutcome, Error, Result, RunId};
use tokio::task::JoinHandle;

use crate::config::TektonConfig;
use crate::error::{Call, RESOURCE, classify, is_retryable};
use crate::naming::pipelinerun_name;
use crate::ratelimit::RateLimiter;
use crate::render::{
    LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_REPO, LABEL_RUN, LABEL_TASK, MANAGED_BY_VALUE,
    render_pipelinerun,
};
use crate::status;
use crate::types::PipelineRun;

/// The observers of every `observe` stream, shared with the watch task.
type Subscribers = Arc<Mutex<Observers>>;

/// Runs task attempts as `tekton.dev/v1` PipelineRuns: a run's in the
/// namespace of its repository ([`TektonConfig::namespace_for`]).
///
/// * **launch** creates the PipelineRun rendered by
///   [`render_pipelinerun`] under its
///   deterministic name; when the name is taken it reads the object and adopts
///   it if its labels say it is the same run, task and attempt, and otherwise
///   reports [`Error::AlreadyExists`] — never two PipelineRuns for one attempt.
/// * **observe** is fed by one kube-runtime [`watcher`] per backend instance
///   (label selector `<prefix>/managed-by=stagetime`; started by the first
///   `observe` call), fanned out to every stream. A PipelineRun deleted before
///   it finished is a failure. Watch errors and `410 Gone` make the watcher
///   re-list; ends that happened meanwhile are still reported.
/// * **reconcile** lists a run's PipelineRuns by label and reports the finished ones.
/// * **cancel** merge-patches `spec.status` ([`crate::config::CancelMode`]).
/// * **housekeeping** deletes finished PipelineRuns older than the TTL, keeping
///   the newest `keep_last` per repository label, with background propagation.
///
/// Observe, reconcile, cancel and housekeeping cover every namespace of
/// [`TektonConfig::namespaces`] (a launch key has no repository: cancel
/// looks for the attempt's PipelineRun in each).
///
/// Every API call goes through a client-side token bucket
/// ([`crate::config::RateLimit`]) and is retried on 429, 5xx and connection
/// errors ([`crate::config::RetryPolicy`]) before [`Error::Unavailable`] is
/// reported.
#[derive(Clone)]
pub struct TektonBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The PipelineRun API of each namespace of `cfg.namespaces()`, the
    /// default namespace's first.
    apis: Vec<(String, Api<PipelineRun>)>,
    cfg: TektonConfig,
    limiter: Option<RateLimiter>,
    subscribers: Subscribers,
    /// One watch per namespace.
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for h in self
            .watchers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

impl std::fmt::Debug for TektonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TektonBackend")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl TektonBackend {
    /// What it runs: a task's `pipeline`, never its `command`.
    pub const CAPABILITIES: Capabilities = Capabilities {
        commands: false,
        pipelines: true,
        custom: false,
    };

    /// A backend using `client` for the namespaces and settings of `cfg`.
    pub fn new(client: Client, cfg: TektonConfig) -> Self {
        let apis = cfg
            .namespaces()
            .into_iter()
            .map(|ns| (ns.to_string(), Api::namespaced(client.clone(), ns)))
            .collect();
        TektonBackend {
            inner: Arc::new(Inner {
                apis,
                limiter: cfg.rate_limit.map(RateLimiter::new),
                cfg,
                subscribers: Arc::default(),
                watchers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A backend for the cluster of the current kubeconfig, or the in-cluster config.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no configuration can be found or the client cannot be built.
    pub async fn try_default(cfg: TektonConfig) -> Result<Self> {
        let client = Client::try_default().await.map_err(|e| {
            Error::unavailable(
                "kubernetes",
                format!("no usable kubeconfig or in-cluster config: {e}"),
            )
        })?;
        Ok(Self::new(client, cfg))
    }

    /// The configuration.
    pub fn config(&self) -> &TektonConfig {
        &self.inner.cfg
    }

    /// The PipelineRun API of the default namespace.
    pub fn api(&self) -> &Api<PipelineRun> {
        &self.inner.apis[0].1
    }

    /// The namespace and PipelineRun API of the runs of repository `repo`.
    fn api_for(&self, repo: &str) -> (&str, &Api<PipelineRun>) {
        let ns = self.inner.cfg.namespace_for(repo);
        self.inner
            .apis
            .iter()
            .find(|(n, _)| n == ns)
            .map_or((ns, self.api()), |(n, api)| (n.as_str(), api))
    }

    /// The name of the PipelineRun of `key`.
    pub fn name_of(key: &LaunchKey) -> String {
        pipelinerun_name(key.run.as_str(), &key.task, key.attempt)
    }

    fn call_in<'a>(&'a self, namespace: &'a str, verb: &'a str, name: Option<&'a str>) -> Call<'a> {
        Call {
            verb,
            namespace,
            name,
        }
    }

    /// Runs one API call through the rate limiter, retrying retryable errors.
    async fn call<T, F, Fut>(&self, what: Call<'_>, mut f: F) -> std::result::Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, kube::Error>>,
    {
        let policy = self.inner.cfg.retry;
        let mut failures = 0;
        loop {
            if let Some(l) = &self.inner.limiter {
                l.acquire().await;
            }
            match f().await {
                Err(e) if is_retryable(&e) && failures + 1 < policy.attempts.max(1) => {
                    failures += 1;
                    let delay = policy.delay(failures);
                    tracing::warn!(verb = what.verb, what = %what.what(), error = %e, ?delay, "retrying Kubernetes API call");
                    tokio::time::sleep(delay).await;
                }
                r => return r,
            }
        }
    }

    fn start_watcher(&self) {
        let mut guard = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !guard.is_empty() && guard.iter().all(|h| !h.is_finished()) {
            return;
        }
        for h in guard.drain(..) {
            h.abort();
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "TektonBackend::observe must be called within a Tokio runtime; no watch started"
            );
            return;
        };
        for (_, api) in &self.inner.apis {
            let selector = self.inner.cfg.managed_selector();
            let prefix = self.inner.cfg.label_prefix.clone();
            let subs = self.inner.subscribers.clone();
            guard.push(rt.spawn(watch_loop(api.clone(), selector, prefix, subs)));
        }
    }
}

async fn watch_loop(api: Api<PipelineRun>, selector: String, prefix: String, subs: Subscribers) {
    let namespace = api.namespace().unwrap_or_default().to_string();
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut tracker = Tracker::new(prefix);
    loop {
        match events.try_next().await {
            Ok(Some(event)) => {
                for obs in tracker.handle(event) {
                    fan_out(&subs, obs);
                }
            }
            Ok(None) => return,
            Err(watcher::Error::InitialListFailed(e)) => log_watch_error(e, "list", &namespace),
            Err(watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e)) => {
                log_watch_error(e, "watch", &namespace)
            }
            Err(e) => {
                tracing::warn!(error = %e, "PipelineRun watch failed; the watcher backs off and re-lists")
            }
        }
    }
}

fn log_watch_error(err: kube::Error, verb: &str, namespace: &str) {
    let call = Call {
        verb,
        namespace,
        name: None,
    };
    match classify(err, call) {
        e @ Error::Forbidden { .. } => {
            tracing::error!(error = %e, "PipelineRun watch refused; no outcomes are observed until RBAC allows it")
        }
        e => {
            tracing::warn!(error = %e, "PipelineRun watch failed; the watcher backs off and re-lists")
        }
    }
}

fn fan_out(subs: &Subscribers, obs: Observation) {
    subs.lock().unwrap_or_else(|e| e.into_inner()).publish(obs);
}

/// The launch key a PipelineRun's labels name, if they name one.
pub fn key_of(pr: &PipelineRun, label_prefix: &str) -> Option<LaunchKey> {
    let labels = pr.metadata.labels.as_ref()?;
    let get = |k: &str| labels.get(&format!("{label_prefix}/{k}"));
    if get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return None;
    }
    Some(LaunchKey {
        run: RunId::new(get(LABEL_RUN)?.clone()).ok()?,
        task: get(LABEL_TASK)?.clone(),
        attempt: get(LABEL_ATTEMPT)?.parse().ok()?,
    })
}

/// True when `existing` carries the identifying labels of `wanted`
/// (managed-by, run, task, attempt): it is the same attempt and may be adopted.
pub fn same_attempt(existing: &PipelineRun, wanted: &PipelineRun, label_prefix: &str) -> bool {
    let empty = BTreeMap::new();
    let have = existing.metadata.labels.as_ref().unwrap_or(&empty);
    let want = wanted.metadata.labels.as_ref().unwrap_or(&empty);
    [LABEL_MANAGED_BY, LABEL_RUN, LABEL_TASK, LABEL_ATTEMPT]
        .iter()
        .all(|k| {
            let k = format!("{label_prefix}/{k}");
            want.get(&k).is_some() && have.get(&k) == want.get(&k)
        })
}

/// When a PipelineRun finished (ms since the epoch): its `completionTime`,
/// else the `Succeeded` condition's transition time, else its creation time.
pub fn finished_ms(pr: &PipelineRun) -> Option<u64> {
    let parse = |s: &str| {
        s.parse::<Timestamp>()
            .ok()
            .map(|t| t.as_millisecond().max(0) as u64)
    };
    pr.status
        .as_ref()
        .and_then(|s| s.completion_time.as_deref())
        .and_then(parse)
        .or_else(|| {
            status::succeeded_condition(pr)
                .and_then(|c| c.last_transition_time.as_deref())
                .and_then(parse)
        })
        .or_else(|| {
            pr.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond().max(0) as u64)
        })
}

#[derive(Debug, Clone)]
struct Known {
    key: LaunchKey,
    finished: bool,
}

/// Turns watcher events into observations: each attempt's end once per
/// tracker (again after a re-list only if it was not seen finished before),
/// and a lost attempt ([`AttemptOutcome::Lost`], retried as an
/// infrastructure failure) for a PipelineRun deleted before it finished —
/// also when the deletion happened while the watch was down (found by the
/// re-list).
#[derive(Debug, Default)]
pub struct Tracker {
    prefix: String,
    known: HashMap<String, Known>,
    relisting: Option<HashSet<String>>,
}

impl Tracker {
    /// A tracker for objects labelled with `label_prefix`.
    pub fn new(label_prefix: impl Into<String>) -> Self {
        Tracker {
            prefix: label_prefix.into(),
            ..Tracker::default()
        }
    }

    fn deleted_unfinished(name: &str, key: LaunchKey) -> Observation {
        Observation {
            key,
            outcome: AttemptOutcome::Lost {
                message: format!("PipelineRun {name} was deleted before it finished"),
            },
        }
    }

    /// The observations one watcher event causes.
    pub fn handle(&mut self, event: Event<PipelineRun>) -> Vec<Observation> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.relisting = Some(HashSet::new()),
            Event::InitApply(pr) | Event::Apply(pr) => {
                let name = pr.name_any();
                if let Some(seen) = &mut self.relisting {
                    seen.insert(name.clone());
                }
                let Some(key) = key_of(&pr, &self.prefix) else {
                    return out;
                };
                let outcome = status::outcome(&pr);
                let was_finished = self.known.get(&name).is_some_and(|k| k.finished);
                let finished = outcome.is_some();
                if let Some(outcome) = outcome
                    && !was_finished
                {
                    out.push(Observation {
                        key: key.clone(),
                        outcome,
                    });
                }
                self.known.insert(name, Known { key, finished });
            }
            Event::Delete(pr) => {
                let name = pr.name_any();
                let prev = self.known.remove(&name);
                let Some(key) =
                    key_of(&pr, &self.prefix).or_else(|| prev.as_ref().map(|p| p.key.clone()))
                else {
                    return out;
                };
                let was_finished = prev.is_some_and(|k| k.finished);
                match status::outcome(&pr) {
                    Some(outcome) if !was_finished => out.push(Observation { key, outcome }),
                    Some(_) => {}
                    None if was_finished => {}
                    None => out.push(Self::deleted_unfinished(&name, key)),
                }
            }
            Event::InitDone => {
                if let Some(seen) = self.relisting.take() {
                    let gone: Vec<String> = self
                        .known
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        if let Some(k) = self.known.remove(&name)
                            && !k.finished
                        {
                            out.push(Self::deleted_unfinished(&name, k.key));
                        }
                    }
                }
            }
        }
        out
    }
}

#[async_trait]
impl Backend for TektonBackend {
    fn name(&self) -> &str {
        "tekton"
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let pr = render_pipelinerun(&request, &self.inner.cfg)?;
        let name = pr.name_any();
        let (ns, api) = self.api_for(&request.run.repo);
        let prefix = &self.inner.cfg.label_prefix;
        let pp = PostParams::default();
        for _ in 0..3 {
            let created = self
                .call(self.call_in(ns, "create", Some(&name)), || {
                    api.create(&pp, &pr)
                })
                .await;
            match created {
                Ok(_) => {
                    tracing::info!(pipelinerun = %name, key = %request.key, "created PipelineRun");
                    return Ok(Launched {
                        handle: name,
                        created: true,
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let existing = self
                        .call(self.call_in(ns, "get", Some(&name)), || api.get_opt(&name))
                        .await
                        .map_err(|e| classify(e, self.call_in(ns, "get", Some(&name))))?;
                    match existing {
                        Some(existing) if same_attempt(&existing, &pr, prefix) => {
                            tracing::info!(pipelinerun = %name, key = %request.key, "adopted existing PipelineRun");
                            return Ok(Launched {
                                handle: name,
                                created: false,
                            });
                        }
                        Some(existing) => {
                            let theirs = key_of(&existing, prefix).map_or_else(
                                || "no stagetime labels".to_string(),
                                |k| format!("attempt {k}"),
                            );
                            return Err(Error::AlreadyExists {
                                what: format!("{RESOURCE} {name:?} in namespace {ns:?}"),
                                message: format!(
                                    "it is not the PipelineRun of attempt {} (its labels say: {theirs}); delete or rename it",
                                    request.key
                                ),
                            });
                        }
                        // Deleted between our create and get: create again.
                        None => continue,
                    }
                }
                Err(e) => return Err(classify(e, self.call_in(ns, "create", Some(&name)))),
            }
        }
        Err(Error::unavailable(
            "kubernetes",
            format!("PipelineRun {name:?} kept being deleted while it was being created"),
        ))
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        let name = Self::name_of(key);
        let prefix = &self.inner.cfg.label_prefix;
        // The attempt's PipelineRun is in its repository's namespace, which
        // the key does not name: look in each.
        let mut found = None;
        for (ns, api) in &self.inner.apis {
            let existing = self
                .call(self.call_in(ns, "get", Some(&name)), || api.get_opt(&name))
                .await
                .map_err(|e| classify(e, self.call_in(ns, "get", Some(&name))))?;
            if let Some(existing) = existing {
                found = Some((ns.as_str(), api, existing));
                break;
            }
        }
        let Some((ns, api, existing)) = found else {
            return Ok(());
        };
        if key_of(&existing, prefix).as_ref() != Some(key) {
            tracing::warn!(pipelinerun = %name, %key, "not cancelling a PipelineRun that is not this attempt's");
            return Ok(());
        }
        let wanted = self.inner.cfg.cancel_mode.as_str();
        if status::is_finished(&existing) || existing.spec.status.as_deref() == Some(wanted) {
            return Ok(());
        }
        let patch = Patch::Merge(serde_json::json!({ "spec": { "status": wanted } }));
        let pp = PatchParams::default();
        let patched = self
            .call(self.call_in(ns, "patch", Some(&name)), || {
                api.patch(&name, &pp, &patch)
            })
            .await;
        match patched {
            Ok(_) => {
                tracing::info!(pipelinerun = %name, %key, status = wanted, "cancelled PipelineRun");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(e, self.call_in(ns, "patch", Some(&name)))),
        }
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        let stream = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe();
        self.start_watcher();
        stream
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let lp = ListParams::default().labels(&self.inner.cfg.run_selector(run.as_str()));
        let prefix = &self.inner.cfg.label_prefix;
        let mut found = Vec::new();
        for (ns, api) in &self.inner.apis {
            let list = self
                .call(self.call_in(ns, "list", None), || api.list(&lp))
                .await
                .map_err(|e| classify(e, self.call_in(ns, "list", None)))?;
            found.extend(list.items.iter().filter_map(|pr| {
                let key = key_of(pr, prefix)?;
                let outcome = status::outcome(pr)?;
                (key.run == *run).then_some(Observation { key, outcome })
            }));
        }
        Ok(found)
    }

    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        let lp = ListParams::default().labels(&self.inner.cfg.managed_selector());
        let mut report = HousekeepingReport::default();
        let dp = DeleteParams::background();
        for (ns, api) in &self.inner.apis {
            let list = self
                .call(self.call_in(ns, "list", None), || api.list(&lp))
                .await
                .map_err(|e| classify(e, self.call_in(ns, "list", None)))?;
            let plan = housekeeping_plan(&list.items, policy, &self.inner.cfg.key(LABEL_REPO));
            for name in plan {
                let deleted = self
                    .call(self.call_in(ns, "delete", Some(&name)), || {
                        api.delete(&name, &dp)
                    })
                    .await;
                match deleted {
                    Ok(_) => report.deleted.push(name),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(classify(e, self.call_in(ns, "delete", Some(&name)))),
                }
            }
        }
        if !report.deleted.is_empty() {
            tracing::info!(
                deleted = report.deleted.len(),
                "housekeeping deleted finished PipelineRuns"
            );
        }
        Ok(report)
    }
}

/// The names housekeeping deletes: per repository label, finished
/// PipelineRuns newest first; the first `keep_last` stay, the rest go when
/// they finished at least `ttl` before `now_ms`. Running ones always stay.
pub fn housekeeping_plan(
    items: &[PipelineRun],
    policy: &Housekeeping,
    repo_label: &str,
) -> Vec<String> {
    let mut by_repo: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for pr in items.iter().filter(|pr| status::is_finished(pr)) {
        let repo = pr.labels().get(repo_label).cloned().unwrap_or_default();
        by_repo
            .entry(repo)
            .or_default()
            .push((finished_ms(pr).unwrap_or(0), pr.name_any()));
    }
    let ttl = stagetime_core::limits::millis(policy.ttl);
    let mut out = Vec::new();
    for (_, mut list) in by_repo {
        list.sort_by(|a, b| b.cmp(a));
        for (i, (done, name)) in list.into_iter().enumerate() {
            if i >= policy.keep_last && done.saturating_add(ttl) <= policy.now_ms {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Condition, PipelineRunSpec, PipelineRunStatus};
    use std::time::Duration;

    fn pr(task: &str, succeeded: Option<(&str, &str)>, completion: Option<&str>) -> PipelineRun {
        let key = LaunchKey {
            run: RunId::new("run-1").unwrap(),
            task: task.into(),
            attempt: 1,
        };
        let mut pr = PipelineRun::new(&TektonBackend::name_of(&key), PipelineRunSpec::default());
        pr.metadata.labels = Some(BTreeMap::from([
            ("stagetime/managed-by".to_string(), "stagetime".to_string()),
            ("stagetime/run".to_string(), "run-1".to_string()),
            ("stagetime/repo".to_string(), "demo".to_string()),
            ("stagetime/task".to_string(), task.to_string()),
            ("stagetime/attempt".to_string(), "1".to_string()),
        ]));
        pr.status = Some(PipelineRunStatus {
            conditions: succeeded
                .map(|(s, r)| Condition {
                    type_: "Succeeded".into(),
                    status: s.into(),
                    reason: Some(r.into()),
                    ..Condition::default()
                })
                .into_iter()
                .collect(),
            completion_time: completion.map(Into::into),
            ..PipelineRunStatus::default()
        });
        pr
    }

    fn tasks(obs: &[Observation]) -> Vec<(&str, &AttemptOutcome)> {
        obs.iter()
            .map(|o| (o.key.task.as_str(), &o.outcome))
            .collect()
    }

    #[test]
    fn each_end_is_reported_once_and_running_is_silent() {
        let mut t = Tracker::new("stagetime");
        assert!(t.handle(Event::Init).is_empty());
        assert!(
            t.handle(Event::InitApply(pr(
                "a",
                Some(("Unknown", "Running")),
                None
            )))
            .is_empty()
        );
        let done = t.handle(Event::InitApply(pr("b", Some(("True", "Succeeded")), None)));
        assert_eq!(
            tasks(&done),
            [("b", &AttemptOutcome::Succeeded)],
            "finished before we watched"
        );
        assert!(t.handle(Event::InitDone).is_empty());
        let a = t.handle(Event::Apply(pr("a", Some(("False", "Failed")), None)));
        assert!(matches!(
            tasks(&a)[..],
            [("a", AttemptOutcome::Failed { .. })]
        ));
        assert!(
            t.handle(Event::Apply(pr("a", Some(("False", "Failed")), None)))
                .is_empty(),
            "no repeat"
        );
        // Re-list after a watch error: nothing new, nothing repeated.
        t.handle(Event::Init);
        t.handle(Event::InitApply(pr("a", Some(("False", "Failed")), None)));
        t.handle(Event::InitApply(pr("b", Some(("True", "Succeeded")), None)));
        assert!(t.handle(Event::InitDone).is_empty());
        // Deleting finished ones (housekeeping) reports nothing.
        assert!(
            t.handle(Event::Delete(pr("b", Some(("True", "Succeeded")), None)))
                .is_empty()
        );
        // Unknown objects are ignored.
        let mut foreign = pr("z", Some(("True", "Succeeded")), None);
        foreign.metadata.labels = None;
        assert!(t.handle(Event::Apply(foreign)).is_empty());
    }

    #[test]
    fn deleted_before_finishing_is_lost() {
        let mut t = Tracker::new("stagetime");
        t.handle(Event::Apply(pr("a", None, None)));
        let obs = t.handle(Event::Delete(pr("a", None, None)));
        match tasks(&obs)[..] {
            [("a", AttemptOutcome::Lost { message })] => {
                assert!(message.contains("deleted before it finished"), "{message}")
            }
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missed_events_are_recovered_by_the_relist() {
        let mut t = Tracker::new("stagetime");
        t.handle(Event::Apply(pr("a", None, None)));
        t.handle(Event::Apply(pr("b", None, None)));
        // The watch broke; meanwhile `a` finished and `b` was deleted.
        t.handle(Event::Init);
        let during = t.handle(Event::InitApply(pr(
            "a",
            Some(("False", "PipelineRunTimeout")),
            None,
        )));
        assert!(matches!(
            tasks(&during)[..],
            [("a", AttemptOutcome::TimedOut { .. })]
        ));
        let after = t.handle(Event::InitDone);
        assert!(
            matches!(tasks(&after)[..], [("b", AttemptOutcome::Lost { .. })]),
            "{after:?}"
        );
    }

    #[test]
    fn housekeeping_keeps_newest_per_repo_and_young_ones() {
        let day = 86_400_000u64;
        let mut items = vec![
            pr(
                "a",
                Some(("True", "Succeeded")),
                Some("2024-01-01T00:00:00Z"),
            ),
            pr("b", Some(("False", "Failed")), Some("2024-01-02T00:00:00Z")),
            pr(
                "c",
                Some(("True", "Succeeded")),
                Some("2024-01-03T00:00:00Z"),
            ),
            pr("d", Some(("Unknown", "Running")), None),
        ];
        let mut other = pr(
            "e",
            Some(("True", "Succeeded")),
            Some("2024-01-01T00:00:00Z"),
        );
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("stagetime/repo".into(), "other".into());
        items.push(other);
        let jan3 = "2024-01-03T00:00:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .as_millisecond() as u64;
        let name = |t: &str| {
            TektonBackend::name_of(&LaunchKey {
                run: RunId::new("run-1").unwrap(),
                task: t.into(),
                attempt: 1,
            })
        };
        let policy = |ttl_days: u64, keep_last: usize| Housekeeping {
            ttl: Duration::from_millis(ttl_days * day),
            keep_last,
            now_ms: jan3 + day,
        };
        let mut got = housekeeping_plan(&items, &policy(0, 1), "stagetime/repo");
        got.sort();
        let mut want = vec![name("a"), name("b")];
        want.sort();
        assert_eq!(
            got, want,
            "keep the newest of demo (c) and of other (e); never the running d"
        );
        assert_eq!(
            housekeeping_plan(&items, &policy(3, 1), "stagetime/repo"),
            [name("a")],
            "b is younger than the TTL"
        );
        assert!(housekeeping_plan(&items, &policy(0, 3), "stagetime/repo").is_empty());
        assert_eq!(finished_ms(&items[2]), Some(jan3));
    }
}

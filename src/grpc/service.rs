//! The service implementations: `stagetime.v1.Runs` and the legacy
//! `revisionrun` services, over [`RunControl`] and a [`Store`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use stagetime_core::control::RunControl;
use stagetime_core::legacy::{LegacyPipelinerun, LegacyRevisionRun};
use stagetime_core::logs::{LogQuery, LogSource};
use stagetime_core::spec::{RevisionRunSpec, parse_document};
use stagetime_core::store::{RunFilter, RunId, RunRecord, Store};
use stagetime_core::{Error, ErrorKind, FieldErrors};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use super::convert::{
    MAX_DETAILED_PROBLEMS, MAX_MESSAGE_PROBLEMS, invalid, run_state_from_proto, run_to_proto,
    status_of, summary_to_proto,
};
use super::metrics::Metrics;
use super::server::Limits;
use super::{legacy, v1};
use stagetime_core::error::cut;

/// What every service shares.
#[derive(Clone)]
struct Api {
    control: RunControl,
    store: Arc<dyn Store>,
    limits: Limits,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Api {
    fn new(store: Arc<dyn Store>, limits: Limits, metrics: Option<Metrics>) -> Self {
        Api {
            control: RunControl::new(Arc::clone(&store)),
            store,
            limits,
            metrics,
        }
    }

    /// Counts the answer to `method` (when metrics are kept) and wraps it.
    #[allow(clippy::result_large_err)]
    fn answer<T>(&self, method: &'static str, r: Result<T, Status>) -> Result<Response<T>, Status> {
        if let Some(m) = &self.metrics {
            m.grpc_request(
                method,
                match &r {
                    Ok(_) => Code::Ok,
                    Err(s) => s.code(),
                },
            );
        }
        r.map(Response::new)
    }

    #[allow(clippy::result_large_err)]
    fn run_id(&self, field: &str, id: &str) -> Result<RunId, Status> {
        if id.is_empty() {
            return Err(invalid(field, "required"));
        }
        RunId::new(id).map_err(|_| {
            invalid(
                field,
                format!(
                    "{:?} is not a valid run id (1-63 of a-z, 0-9, '-', '.')",
                    cut(id, 80)
                ),
            )
        })
    }

    #[allow(clippy::result_large_err)]
    fn check_tasks(&self, field: &str, n: usize) -> Result<(), Status> {
        if n > self.limits.max_tasks {
            return Err(invalid(
                field,
                format!(
                    "{n} tasks exceed the limit of {} per run",
                    self.limits.max_tasks
                ),
            ));
        }
        Ok(())
    }

    /// The status of a failed run lookup: a run not found after the store
    /// lost its data says so, instead of a bare NOT_FOUND.
    fn lookup_status(&self, e: &Error) -> Status {
        let lost = self.metrics.as_ref().and_then(|m| m.store_lost_at_ms());
        match lost {
            Some(ms) if e.kind() == ErrorKind::NotFound => Status::not_found(format!(
                "{e}; note: the store lost its data at {} (Redis restarted without persistence or \
                 flushed?): runs submitted before then are gone",
                rfc3339(ms)
            )),
            _ => status_of(e),
        }
    }

    async fn submit_spec(&self, spec: RevisionRunSpec) -> Result<(RunId, bool), Error> {
        let runnable_by = self
            .limits
            .runnable_by
            .as_ref()
            .map(|(caps, name)| (*caps, name.as_str()));
        let submitted = self.control.submit(spec, runnable_by).await?;
        Ok((submitted.id, submitted.created))
    }
}

/// `stagetime.v1.Runs`: submit, get, list, watch, cancel, rerun.
#[derive(Clone, Debug)]
pub struct RunsService {
    api: Api,
    logs: super::server::SharedLogSource,
    watch_poll: Duration,
    watches: Arc<Semaphore>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl RunsService {
    /// The service over `store`; `metrics` counts requests when given.
    /// Open watches end (with `UNAVAILABLE`, so clients watch again
    /// elsewhere) once `stopping` turns true.
    pub fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        metrics: Option<Metrics>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        RunsService {
            logs: super::server::SharedLogSource(Arc::new(
                stagetime_core::logs::StoreLogSource::new(Arc::clone(&store)),
            )),
            stopping,
            watches: Arc::new(Semaphore::new(limits.max_watches)),
            watch_poll: limits.watch_poll,
            api: Api::new(store, limits, metrics),
        }
    }

    /// Reads `Logs` from `logs` instead of the store's archive.
    pub fn with_logs(mut self, logs: Arc<dyn LogSource>) -> Self {
        self.logs = super::server::SharedLogSource(logs);
        self
    }

    async fn do_logs(&self, req: v1::LogsRequest) -> Result<LogsStream, Status> {
        const MAX_TASK: usize = 256;
        let id = self.api.run_id("id", &req.id)?;
        if req.task.len() > MAX_TASK {
            return Err(invalid("task", format!("longer than {MAX_TASK} bytes")));
        }
        if req.attempt != 0 && req.task.is_empty() {
            return Err(invalid(
                "attempt",
                "needs a task: attempts are numbered per task",
            ));
        }
        // A followed log is held open like a watch, and counts as one.
        let permit = if req.follow {
            Some(Arc::clone(&self.watches).try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("too many watches open on this server; retry later")
            })?)
        } else {
            None
        };
        let query = LogQuery {
            run: id,
            task: (!req.task.is_empty()).then_some(req.task),
            attempt: (req.attempt != 0).then_some(req.attempt),
            follow: req.follow,
        };
        let chunks = self
            .logs
            .0
            .open(query)
            .await
            .map_err(|e| self.api.lookup_status(&e))?;
        let state = LogsState {
            chunks,
            stopping: self.stopping.clone(),
            done: false,
            _permit: permit,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            let item = tokio::select! {
                item = s.chunks.next() => item?.map(|c| v1::LogChunk {
                    task: c.task,
                    attempt: c.attempt,
                    step: c.step.unwrap_or_default(),
                    text: c.text,
                }).map_err(|e| status_of(&e)),
                _ = s.stopping.wait_for(|stop| *stop) => Err(Status::unavailable(
                    "the server is shutting down; follow again",
                )),
            };
            s.done = item.is_err();
            Some((item, s))
        });
        Ok(Box::pin(stream))
    }

    async fn do_submit(&self, req: v1::SubmitRequest) -> Result<v1::SubmitResponse, Status> {
        let doc = req.document;
        if doc.trim().is_empty() {
            return Err(invalid(
                "document",
                "required: the revision-run document as YAML or JSON text",
            ));
        }
        if doc.len() > self.api.limits.max_document_bytes {
            return Err(invalid(
                "document",
                format!(
                    "{} bytes exceed the limit of {} bytes",
                    doc.len(),
                    self.api.limits.max_document_bytes
                ),
            ));
        }
        let (spec, _) = parse_document("document", &doc).map_err(|e| status_of(&e))?;
        self.api
            .check_tasks("tasks", spec.tasks.len() + spec.finally.len())?;
        let (id, created) = self
            .api
            .submit_spec(spec)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(v1::SubmitResponse {
            id: id.to_string(),
            created,
        })
    }

    async fn do_get(&self, req: v1::GetRequest) -> Result<v1::Run, Status> {
        let id = self.api.run_id("id", &req.id)?;
        let run = self
            .api
            .control
            .view(&id)
            .await
            .map_err(|e| self.api.lookup_status(&e))?;
        Ok(run_to_proto(&run))
    }

    async fn do_list(&self, req: v1::ListRequest) -> Result<v1::ListResponse, Status> {
        const MAX_FILTER: usize = 256;
        const MAX_PAGE: u32 = 1000;
        let mut filter = RunFilter::default();
        for (field, value, slot) in [
            ("repo", req.repo, &mut filter.repo),
            ("commit", req.commit, &mut filter.commit),
            (
                "concurrency_group",
                req.concurrency_group,
                &mut filter.concurrency_group,
            ),
        ] {
            if value.len() > MAX_FILTER {
                return Err(invalid(field, format!("longer than {MAX_FILTER} bytes")));
            }
            if !value.is_empty() {
                *slot = Some(value);
            }
        }
        if req.states.len() > 5 {
            return Err(invalid("states", "at most 5 states"));
        }
        for (i, s) in req.states.iter().enumerate() {
            let state = v1::RunState::try_from(*s)
                .ok()
                .and_then(run_state_from_proto)
                .ok_or_else(|| {
                    invalid(&format!("states[{i}]"), format!("{s} is not a run state"))
                })?;
            filter.states.push(state);
        }
        if req.page_size > MAX_PAGE {
            return Err(invalid(
                "page_size",
                format!("{} exceeds the maximum of {MAX_PAGE}", req.page_size),
            ));
        }
        filter.limit = if req.page_size == 0 {
            50
        } else {
            req.page_size as usize
        };
        if req.page_token.len() > MAX_FILTER {
            return Err(invalid("page_token", "not a token returned by List"));
        }
        if !req.page_token.is_empty() {
            filter.after = Some(req.page_token);
        }
        let page = self
            .api
            .store
            .list_runs(&filter)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Invalid => invalid("page_token", "not a token returned by List"),
                _ => status_of(&e),
            })?;
        Ok(v1::ListResponse {
            runs: page.runs.iter().map(summary_to_proto).collect(),
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    async fn do_cancel(&self, req: v1::CancelRequest) -> Result<v1::CancelResponse, Status> {
        let id = self.api.run_id("id", &req.id)?;
        self.api
            .control
            .cancel(&id)
            .await
            .map_err(|e| self.api.lookup_status(&e))?;
        info!(run = %id, "cancel requested");
        Ok(v1::CancelResponse {})
    }

    async fn do_rerun(&self, req: v1::RerunRequest) -> Result<v1::RerunResponse, Status> {
        let id = self.api.run_id("id", &req.id)?;
        let expected = (req.expected_version != 0).then_some(req.expected_version);
        let version = self
            .api
            .control
            .rerun_tasks(&id, expected, &req.tasks)
            .await
            .map_err(|e| self.api.lookup_status(&e))?;
        info!(run = %id, "rerun requested");
        Ok(v1::RerunResponse { version })
    }

    async fn do_watch(&self, req: v1::WatchRequest) -> Result<WatchStream, Status> {
        let id = self.api.run_id("id", &req.id)?;
        let permit = Arc::clone(&self.watches).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("too many watches open on this server; retry later")
        })?;
        let first = self
            .api
            .control
            .get(&id)
            .await
            .map_err(|e| self.api.lookup_status(&e))?;
        let state = WatchState {
            store: Arc::clone(&self.api.store),
            control: self.api.control.clone(),
            id,
            poll: self.watch_poll,
            next: Some(first),
            last_version: 0,
            done: false,
            stopping: self.stopping.clone(),
            _permit: permit,
        };
        Ok(Box::pin(futures::stream::unfold(state, watch_step)))
    }
}

/// An open `Logs` stream: it ends after its first error or at shutdown.
struct LogsState {
    chunks: stagetime_core::logs::LogStream,
    stopping: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The stream of [`RunsService`]'s `Logs`.
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<v1::LogChunk, Status>> + Send + 'static>>;

/// The stream of [`RunsService`]'s `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::Run, Status>> + Send + 'static>>;

struct WatchState {
    store: Arc<dyn Store>,
    control: RunControl,
    id: RunId,
    poll: Duration,
    next: Option<RunRecord>,
    last_version: u64,
    done: bool,
    stopping: tokio::sync::watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One item of a watch: the next record whose version changed, polled from
/// the store (the server runs no engine; any worker may change the run).
/// The stream ends after a finished run was sent, on the first error, or
/// when the server shuts down;
/// when the client goes away, tonic drops the stream and polling stops.
async fn watch_step(mut s: WatchState) -> Option<(Result<v1::Run, Status>, WatchState)> {
    if s.done {
        return None;
    }
    let mut unavailable = 0u32;
    loop {
        let record = match s.next.take() {
            Some(r) => r,
            None => {
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(s.poll) => false,
                    _ = s.stopping.wait_for(|stop| *stop) => true,
                };
                if stopped {
                    s.done = true;
                    return Some((
                        Err(Status::unavailable(
                            "the server is shutting down; watch again",
                        )),
                        s,
                    ));
                }
                // A cheap version check first; the record only when it moved.
                let changed = match s.store.run_version(&s.id).await {
                    Ok(v) => {
                        unavailable = 0;
                        v != s.last_version
                    }
                    Err(e) if e.kind() == ErrorKind::Unavailable && unavailable < 20 => {
                        unavailable += 1;
                        warn!(run = %s.id, error = %e, "watch: store unavailable; retrying");
                        continue;
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(status_of(&e)), s));
                    }
                };
                if !changed {
                    continue;
                }
                match s.store.load_run(&s.id).await {
                    Ok(r) => r,
                    Err(e) if e.kind() == ErrorKind::Unavailable && unavailable < 20 => {
                        unavailable += 1;
                        warn!(run = %s.id, error = %e, "watch: store unavailable; retrying");
                        continue;
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(status_of(&e)), s));
                    }
                }
            }
        };
        unavailable = 0;
        if record.version == s.last_version {
            continue;
        }
        s.last_version = record.version;
        s.done = record.state.is_finished();
        let item = s
            .control
            .view_of(&record)
            .map(|run| run_to_proto(&run))
            .map_err(|e| status_of(&e));
        if item.is_err() {
            s.done = true;
        }
        return Some((item, s));
    }
}

#[tonic::async_trait]
impl v1::runs_server::Runs for RunsService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        self.api
            .answer("Submit", self.do_submit(request.into_inner()).await)
    }

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<v1::Run>, Status> {
        self.api
            .answer("Get", self.do_get(request.into_inner()).await)
    }

    async fn list(
        &self,
        request: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        self.api
            .answer("List", self.do_list(request.into_inner()).await)
    }

    type WatchStream = WatchStream;

    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.api
            .answer("Logs", self.do_logs(request.into_inner()).await)
    }

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.api
            .answer("Watch", self.do_watch(request.into_inner()).await)
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        self.api
            .answer("Cancel", self.do_cancel(request.into_inner()).await)
    }

    async fn rerun(
        &self,
        request: Request<v1::RerunRequest>,
    ) -> Result<Response<v1::RerunResponse>, Status> {
        self.api
            .answer("Rerun", self.do_rerun(request.into_inner()).await)
    }
}

/// The earlier system's `StageTimeApplicationService`.
#[derive(Clone, Debug)]
pub struct LegacyService {
    api: Api,
}

impl LegacyService {
    /// The service over `store`; `metrics` counts requests when given.
    pub fn new(store: Arc<dyn Store>, limits: Limits, metrics: Option<Metrics>) -> Self {
        LegacyService {
            api: Api::new(store, limits, metrics),
        }
    }

    /// Creates the run; `Ok(Err(errors))` is bad input (answered with
    /// `Response.result = ERROR`), `Err` an infrastructure failure.
    async fn create(
        &self,
        req: legacy::CreateRevisionRunRequest,
    ) -> Result<Result<(RunId, bool), FieldErrors>, Status> {
        let mut errors = FieldErrors::default();
        if req.pipelineruns.len() > self.api.limits.max_tasks {
            errors.push(
                "pipelineruns",
                format!(
                    "{} entries exceed the limit of {} per run",
                    req.pipelineruns.len(),
                    self.api.limits.max_tasks
                ),
            );
            return Ok(Err(errors));
        }
        for (i, pr) in req.pipelineruns.iter().enumerate() {
            if !pr.stage.is_finite() {
                errors.push(
                    format!("pipelineruns[{i}].stage"),
                    format!("{} is not a non-negative whole number", pr.stage),
                );
            }
        }
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        let run = LegacyRevisionRun {
            repo_name: req.repo_name,
            pushed_at: req.pushed_at,
            author: req.author,
            repo_url: req.repo_url,
            commit_id: req.commit_id,
            pipelineruns: req
                .pipelineruns
                .into_iter()
                .map(|p| LegacyPipelinerun {
                    name: p.name,
                    canfail: p.canfail,
                    stage: p.stage.into(),
                    params: p.params,
                    resolver_params: p.resolver_params,
                    listparams: p.listparams,
                    workspaces: p.workspaces,
                    volume_claim_templates: p.volume_claim_templates,
                })
                .collect(),
        };
        let result = match run.into_spec() {
            Ok(spec) => self.api.submit_spec(spec).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(done) => Ok(Ok(done)),
            Err(Error::Invalid(errors)) => Ok(Err(legacy_paths(errors))),
            Err(e) if e.kind() == ErrorKind::Invalid => {
                let mut errors = FieldErrors::default();
                errors.push("request", e.to_string());
                Ok(Err(errors))
            }
            Err(e) => Err(status_of(&e)),
        }
    }
}

/// Renames native field paths to the legacy request's (`tasks[0]` →
/// `pipelineruns[0]`, `repo` → `repo_name`, `commit` → `commit_id`).
fn legacy_paths(errors: FieldErrors) -> FieldErrors {
    FieldErrors(
        errors
            .0
            .into_iter()
            .map(|mut e| {
                e.path = if let Some(rest) = e.path.strip_prefix("tasks") {
                    format!("pipelineruns{rest}")
                } else if e.path == "repo" {
                    "repo_name".into()
                } else if e.path == "commit" {
                    "commit_id".into()
                } else {
                    e.path
                };
                e
            })
            .collect(),
    )
}

#[tonic::async_trait]
impl legacy::stage_time_application_service_server::StageTimeApplicationService for LegacyService {
    async fn create_revision_run(
        &self,
        request: Request<legacy::CreateRevisionRunRequest>,
    ) -> Result<Response<legacy::Response>, Status> {
        let r = self.create(request.into_inner()).await.map(|r| match r {
            Ok((id, created)) => {
                // The earlier server's text first, for clients that look for it.
                let repeat = if created {
                    ""
                } else {
                    " (it existed already: nothing new was started)"
                };
                legacy::Response {
                    result: legacy::response::Result::Success as i32,
                    success: Some(legacy::response::Success {
                        data: format!("{LEGACY_CREATED}: run {id}{repeat}").into_bytes(),
                    }),
                    error: None,
                }
            }
            Err(errors) => {
                // Bounded however many problems the request had.
                let mut json: Vec<serde_json::Value> = errors
                    .0
                    .iter()
                    .take(MAX_DETAILED_PROBLEMS)
                    .map(|e| serde_json::json!({"path": cut(&e.path, 200), "message": cut(&e.message, 300)}))
                    .collect();
                if errors.len() > MAX_DETAILED_PROBLEMS {
                    json.push(serde_json::json!({
                        "path": "",
                        "message": format!("… and {} more problems", errors.len() - MAX_DETAILED_PROBLEMS),
                    }));
                }
                let summary = errors.summary(MAX_MESSAGE_PROBLEMS);
                legacy::Response {
                    result: legacy::response::Result::Error as i32,
                    success: None,
                    error: Some(legacy::response::Error {
                        message: format!("invalid revision run: {summary}").replace('\n', "; "),
                        errors: serde_json::to_vec(&json).unwrap_or_default(),
                    }),
                }
            }
        });
        self.api.answer("CreateRevisionRun", r)
    }
}

/// The earlier system's `Statuses` service.
#[derive(Clone, Debug)]
pub struct StatusService {
    api: Api,
}

impl StatusService {
    /// The service over `store`; `metrics` counts requests when given.
    pub fn new(store: Arc<dyn Store>, limits: Limits, metrics: Option<Metrics>) -> Self {
        StatusService {
            api: Api::new(store, limits, metrics),
        }
    }

    /// A run by id, or else the newest run of a commit by that id.
    async fn find(&self, key: &str) -> Result<RunRecord, Status> {
        if key.is_empty() {
            return Err(invalid(
                "revision_run_id",
                "required: a run id or a commit id",
            ));
        }
        if key.len() > 256 {
            return Err(invalid("revision_run_id", "longer than 256 bytes"));
        }
        if let Ok(id) = RunId::new(key) {
            match self.api.store.load_run(&id).await {
                Ok(r) => return Ok(r),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(status_of(&e)),
            }
        }
        let page = self
            .api
            .store
            .list_runs(&RunFilter {
                commit: Some(key.to_string()),
                limit: 1,
                ..RunFilter::default()
            })
            .await
            .map_err(|e| status_of(&e))?;
        match page.runs.first() {
            Some(s) => self
                .api
                .store
                .load_run(&s.id)
                .await
                .map_err(|e| status_of(&e)),
            None => Err(Status::not_found(format!(
                "revision_run_id: no run and no commit {:?}",
                cut(key, 80)
            ))),
        }
    }
}

#[tonic::async_trait]
impl legacy::statuses_server::Statuses for StatusService {
    async fn get_status(
        &self,
        request: Request<legacy::StatusGetRequest>,
    ) -> Result<Response<legacy::StatusGetReply>, Status> {
        let r = self
            .find(&request.into_inner().revision_run_id)
            .await
            .map(|record| legacy::StatusGetReply {
                status: Some(legacy::Status {
                    id: record.id.to_string(),
                    updated: rfc3339(record.updated_ms),
                    status: record.state.as_str().to_uppercase(),
                }),
            });
        self.api.answer("GetStatus", r)
    }
}

/// What the earlier server answered to every CreateRevisionRun.
const LEGACY_CREATED: &str = "GOOD JOB - REVISIONRUN WAS CREATED";

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_the_workers_cannot_run_are_refused_at_submit_and_nothing_is_stored() {
        let store: Arc<dyn Store> = Arc::new(stagetime_core::memory::MemoryStore::new());
        let limits = Limits {
            runnable_by: Some((
                stagetime_core::backend::Capabilities {
                    commands: false,
                    pipelines: true,
                    custom: false,
                },
                "tekton".into(),
            )),
            ..Limits::default()
        };
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let runs = RunsService::new(Arc::clone(&store), limits, None, stopping);
        let document =
            "repo: r\ncommit: c1\ntasks:\n  - {name: build, command: make}\n".to_string();
        let err = runs
            .do_submit(v1::SubmitRequest { document })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("tasks[0]"), "{}", err.message());
        assert!(err.message().contains("tekton"), "{}", err.message());
        let page = store.list_runs(&RunFilter::default()).await.unwrap();
        assert!(page.runs.is_empty(), "nothing stored");
    }

    #[test]
    fn answer_counts_by_code_and_wraps() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let store: Arc<dyn Store> = Arc::new(stagetime_core::memory::MemoryStore::new());
        let api = Api::new(store, Limits::default(), Some(metrics));
        assert_eq!(api.answer("Get", Ok(7)).unwrap().into_inner(), 7);
        let refused = api.answer::<()>("Get", Err(Status::not_found("no run")));
        assert_eq!(refused.unwrap_err().code(), Code::NotFound);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for code in ["Ok", "NotFound"] {
            assert!(
                text.lines().any(|l| l.contains("method=\"Get\"")
                    && l.contains(&format!("code=\"{code}\""))
                    && l.ends_with(" 1")),
                "{code}: {text}"
            );
        }
        let quiet = Api::new(Arc::clone(&api.store), Limits::default(), None);
        assert!(
            quiet.answer("Get", Ok(())).is_ok(),
            "no metrics: just wraps"
        );
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_705_153_236_123), "2024-01-13T13:40:36.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}

//! The client side of the API: [`Client`], a typed client of
//! `stagetime.v1.Runs` that speaks in the model's types ([`RunView`],
//! [`RunSummary`], [`Submitted`]) and maps gRPC codes to [`ClientError`]
//! once, and [`Stubs`], the generated protocol stubs for wire-level work
//! (the legacy services, conformance tests).
//!
//! ```no_run
//! # async fn demo() -> Result<(), stagetime::grpc::client::ClientError> {
//! use futures::StreamExt;
//! use stagetime::grpc::client::{Client, ClientConfig, RunQuery, WatchEvent};
//!
//! let client = Client::connect(&ClientConfig::new("http://127.0.0.1:50051")).await?;
//! let run = client.submit("repo: demo\ncommit: abc\ntasks: [{name: a, command: 'true'}]\n").await?;
//! let mut updates = client.watch(run.id.as_str(), 0);
//! while let Some(event) = updates.next().await {
//!     if let WatchEvent::Update(view) = event? {
//!         println!("{} is {}", view.id, view.state.as_str());
//!     }
//! }
//! let recent: Vec<_> = client.list(RunQuery { limit: 10, ..RunQuery::default() })
//!     .collect().await;
//! # let _ = recent;
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use stagetime_core::control::Submitted;
use stagetime_core::logs::{LogChunk, LogQuery};
use stagetime_core::store::{RunId, RunState, RunSummary};
use stagetime_core::view::RunView;
use stagetime_core::{Error, ErrorKind, FieldError};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt;

use super::{legacy, v1};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` (plaintext) or `https://host:port` (TLS).
    pub server: String,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Extra CA certificate (PEM) to trust for `https://`, besides the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Largest message accepted or sent.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `server`: no token, 5 s connect timeout, 4 MiB messages.
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            token: None,
            ca_cert: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: 4 << 20,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with the token attached.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// The generated stubs of every API service over one connection, for
/// wire-level work; applications use [`Client`].
#[derive(Debug, Clone)]
pub struct Stubs {
    /// `stagetime.v1.Runs`.
    pub runs: v1::runs_client::RunsClient<AuthChannel>,
    /// The legacy `StageTimeApplicationService`.
    pub create: legacy::stage_time_application_service_client::StageTimeApplicationServiceClient<
        AuthChannel,
    >,
    /// The legacy `Statuses`.
    pub statuses: legacy::statuses_client::StatusesClient<AuthChannel>,
}

fn invalid(setting: &str, message: impl std::fmt::Display) -> Error {
    Error::config(setting, message)
}

/// Connects the generated stubs (eagerly, so an unreachable server is
/// reported here).
///
/// # Errors
/// [`Error::Config`] naming `server`, `token` or `ca_cert` for bad
/// settings; [`Error::Unavailable`] when the server cannot be reached.
pub async fn connect_stubs(config: &ClientConfig) -> Result<Stubs, Error> {
    let url = config.server.trim();
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(invalid(
            "server",
            format!("{url:?} must start with http:// (plaintext) or https:// (TLS)"),
        ));
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| invalid("server", format!("{url:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if tls {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| invalid("ca_cert", format!("cannot read {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid("server", format!("TLS setup: {e}")))?;
    }
    let token = match &config.token {
        Some(t) if !t.trim().is_empty() => Some(
            format!("Bearer {}", t.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| invalid("token", "must be printable ASCII"))?,
        ),
        _ => None,
    };
    let channel = endpoint.connect().await.map_err(|e| {
        // The transport's own text is terse ("transport error"): the causes say why.
        let mut message = String::from("cannot connect");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::unavailable_from(format!("server {url}"), message, e)
    })?;
    let max = config.max_message_bytes;
    let ch = InterceptedService::new(channel, Bearer(token));
    Ok(Stubs {
        runs: v1::runs_client::RunsClient::new(ch.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        create:
            legacy::stage_time_application_service_client::StageTimeApplicationServiceClient::new(
                ch.clone(),
            )
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        statuses: legacy::statuses_client::StatusesClient::new(ch)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    })
}

/// A failed call: what kind of failure (as the core classifies errors), the
/// gRPC code when the server answered, and its message.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ClientError {
    kind: ErrorKind,
    code: Option<Code>,
    message: String,
    /// The problems of a refused input, from the status details.
    problems: Vec<FieldError>,
    #[source]
    source: Option<Box<Error>>,
}

impl ClientError {
    /// How to treat it: `Invalid`, `NotFound`, `AlreadyExists` and
    /// `Conflict` are the caller's to fix, `Forbidden` wants a token,
    /// `Unavailable` may pass.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The server's (or the connection's) message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The problems of a refused input (field path and message; the first
    /// 100 the server sent as `google.rpc.BadRequest` details).
    pub fn problems(&self) -> &[FieldError] {
        &self.problems
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }

    fn describe(&self) -> String {
        let hint = match self.code {
            Some(Code::Unauthenticated) => " (set STAGETIME_AUTH_TOKEN)",
            _ => "",
        };
        let mut text = match self.code {
            Some(code) => format!("{code:?}: {}{hint}", self.message),
            None => self.message.clone(),
        };
        // The message lists the first problems; the details list more.
        let listed = self.message.lines().count().saturating_sub(1);
        if self.problems.len() > listed {
            text.push_str("\nin detail:");
            for p in &self.problems {
                text.push_str(&format!("\n  {p}"));
            }
        }
        text
    }

    fn protocol(message: impl Into<String>) -> Self {
        ClientError {
            kind: ErrorKind::Other,
            code: None,
            message: message.into(),
            problems: Vec::new(),
            source: None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    /// The one mapping of gRPC codes to kinds.
    fn from(s: tonic::Status) -> Self {
        let kind = match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                ErrorKind::Invalid
            }
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::Aborted => ErrorKind::Conflict,
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Forbidden,
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        let problems = s
            .get_details_bad_request()
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| FieldError::new(v.field, v.description))
                    .collect()
            })
            .unwrap_or_default();
        ClientError {
            kind,
            code: Some(s.code()),
            message: s.message().to_string(),
            problems,
            source: None,
        }
    }
}

impl From<Error> for ClientError {
    fn from(e: Error) -> Self {
        ClientError {
            kind: e.kind(),
            code: None,
            message: e.to_string(),
            problems: Vec::new(),
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(feature = "telemetry")]
impl From<ClientError> for crate::runtime::Failure {
    /// Exit status 2 for what the caller must fix (input, ids, versions,
    /// tokens), 3 for a server or store that is unavailable or broken.
    fn from(e: ClientError) -> Self {
        let code = match e.kind {
            ErrorKind::Invalid
            | ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::Conflict
            | ErrorKind::Forbidden => Self::INVALID,
            _ => Self::UNAVAILABLE,
        };
        crate::runtime::Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Which runs [`Client::list`] yields; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only this repository.
    pub repo: Option<String>,
    /// Only this commit.
    pub commit: Option<String>,
    /// Only runs in one of these states.
    pub states: Vec<RunState>,
    /// Only runs of this concurrency group.
    pub concurrency_group: Option<String>,
    /// At most this many runs in all (0: every run), fetched page by page.
    pub limit: usize,
}

/// What [`Client::watch`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The run changed (the first event is the run as it is).
    Update(Box<RunView>),
    /// The stream broke; the client is watching again (`reason` says why).
    Reconnecting {
        /// What broke.
        reason: String,
    },
}

/// How often a watch reconnects in a row before giving up.
const WATCH_RETRIES: u32 = 5;

/// A typed client of `stagetime.v1.Runs`: cheap to clone (one connection).
#[derive(Debug, Clone)]
pub struct Client {
    runs: v1::runs_client::RunsClient<AuthChannel>,
}

impl Client {
    /// Connects (eagerly, so an unreachable server is reported here).
    ///
    /// # Errors
    /// Kind `Invalid` naming `server`, `token` or `ca_cert` for bad
    /// settings; `Unavailable` when the server cannot be reached.
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let stubs = connect_stubs(config).await?;
        Ok(Client { runs: stubs.runs })
    }

    /// Submits a document (native YAML/JSON or the earlier system's JSON).
    /// Idempotent: the same document again answers the same run with
    /// `created: false`.
    ///
    /// # Errors
    /// `Invalid` with every problem of the document (nothing stored);
    /// `AlreadyExists` for another document under an existing id.
    pub async fn submit(&self, document: impl Into<String>) -> Result<Submitted, ClientError> {
        let r = self
            .runs
            .clone()
            .submit(v1::SubmitRequest {
                document: document.into(),
            })
            .await?
            .into_inner();
        Ok(Submitted {
            id: run_id(&r.id)?,
            created: r.created,
        })
    }

    /// A run with every stage and task.
    ///
    /// # Errors
    /// `NotFound` for an unknown run; `Invalid` for a malformed id.
    pub async fn get(&self, id: &str) -> Result<RunView, ClientError> {
        let run = self
            .runs
            .clone()
            .get(v1::GetRequest { id: id.to_string() })
            .await?
            .into_inner();
        Ok(super::convert::run_from_proto(&run)?)
    }

    /// Runs matching `query`, newest first, following pages as they are read.
    pub fn list(&self, query: RunQuery) -> BoxStream<'static, Result<RunSummary, ClientError>> {
        struct Pages {
            runs: v1::runs_client::RunsClient<AuthChannel>,
            query: RunQuery,
            token: Option<String>,
            buffered: std::collections::VecDeque<RunSummary>,
            yielded: usize,
            failed: bool,
        }
        let pages = Pages {
            runs: self.runs.clone(),
            query,
            token: Some(String::new()),
            buffered: Default::default(),
            yielded: 0,
            failed: false,
        };
        futures::stream::unfold(pages, |mut p| async move {
            let limit = if p.query.limit == 0 {
                usize::MAX
            } else {
                p.query.limit
            };
            loop {
                if p.failed || p.yielded >= limit {
                    return None;
                }
                if let Some(run) = p.buffered.pop_front() {
                    p.yielded += 1;
                    return Some((Ok(run), p));
                }
                let token = p.token.take()?;
                let request = v1::ListRequest {
                    repo: p.query.repo.clone().unwrap_or_default(),
                    commit: p.query.commit.clone().unwrap_or_default(),
                    concurrency_group: p.query.concurrency_group.clone().unwrap_or_default(),
                    states: p
                        .query
                        .states
                        .iter()
                        .map(|s| super::run_state_to_proto(*s) as i32)
                        .collect(),
                    page_size: (limit - p.yielded).min(1000) as u32,
                    page_token: token,
                };
                match p.runs.list(request).await {
                    Ok(page) => {
                        let page = page.into_inner();
                        if !page.next_page_token.is_empty() {
                            p.token = Some(page.next_page_token);
                        }
                        for r in &page.runs {
                            match summary_from_proto(r) {
                                Ok(s) => p.buffered.push_back(s),
                                Err(e) => {
                                    p.failed = true;
                                    return Some((Err(e), p));
                                }
                            }
                        }
                    }
                    Err(s) => {
                        p.failed = true;
                        return Some((Err(s.into()), p));
                    }
                }
            }
        })
        .boxed()
    }

    /// Follows a run until it finishes: its state first, then every change;
    /// reconnects (with growing pauses, up to 5 failures in a row) when the
    /// stream breaks, e.g. during a server rollout. A finished state of
    /// version `after_version` or older (the run before a rerun was applied)
    /// is not the end: the watch looks again.
    pub fn watch(
        &self,
        id: &str,
        after_version: u64,
    ) -> BoxStream<'static, Result<WatchEvent, ClientError>> {
        struct Watch {
            runs: v1::runs_client::RunsClient<AuthChannel>,
            id: String,
            after_version: u64,
            stream: Option<tonic::Streaming<v1::Run>>,
            failures: u32,
            done: bool,
        }
        let watch = Watch {
            runs: self.runs.clone(),
            id: id.to_string(),
            after_version,
            stream: None,
            failures: 0,
            done: false,
        };
        futures::stream::unfold(watch, |mut w| async move {
            if w.done {
                return None;
            }
            loop {
                let Some(stream) = w.stream.as_mut() else {
                    match w.runs.watch(v1::WatchRequest { id: w.id.clone() }).await {
                        Ok(s) => w.stream = Some(s.into_inner()),
                        Err(s) if s.code() == Code::Unavailable && w.failures < WATCH_RETRIES => {
                            w.failures += 1;
                            tokio::time::sleep(Duration::from_secs(u64::from(w.failures))).await;
                        }
                        Err(s) => {
                            w.done = true;
                            return Some((Err(s.into()), w));
                        }
                    }
                    continue;
                };
                let broke = match stream.message().await {
                    Ok(Some(run)) => {
                        // Only consecutive failures count: a long watch may
                        // outlive several server restarts.
                        w.failures = 0;
                        let view = match super::convert::run_from_proto(&run) {
                            Ok(v) => v,
                            Err(e) => {
                                w.done = true;
                                return Some((Err(e.into()), w));
                            }
                        };
                        if view.state.is_finished() && view.version <= w.after_version {
                            // The rerun is not applied yet: look again shortly.
                            w.stream = None;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        w.done = view.state.is_finished();
                        return Some((Ok(WatchEvent::Update(Box::new(view))), w));
                    }
                    Ok(None) => "the server ended the watch before the run finished".to_string(),
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Unavailable | Code::Unknown | Code::Internal
                        ) =>
                    {
                        s.message().to_string()
                    }
                    Err(s) => {
                        w.done = true;
                        return Some((Err(s.into()), w));
                    }
                };
                w.stream = None;
                w.failures += 1;
                if w.failures > WATCH_RETRIES {
                    w.done = true;
                    let e = ClientError {
                        kind: ErrorKind::Unavailable,
                        code: None,
                        message: format!(
                            "watch of run {} failed {WATCH_RETRIES} times in a row: {broke}",
                            w.id
                        ),
                        problems: Vec::new(),
                        source: None,
                    };
                    return Some((Err(e), w));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Some((Ok(WatchEvent::Reconnecting { reason: broke }), w));
            }
        })
        .boxed()
    }

    /// Asks for a run to be cancelled. Idempotent.
    ///
    /// # Errors
    /// `NotFound` for an unknown run.
    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        self.runs
            .clone()
            .cancel(v1::CancelRequest { id: id.to_string() })
            .await?;
        Ok(())
    }

    /// Asks for a finished run to be run again, keeping its succeeded tasks;
    /// with `expected_version`, only if the run is still at that version (a
    /// retried request never runs it a third time). Returns the version to
    /// watch past ([`Client::watch`]'s `after_version`).
    ///
    /// # Errors
    /// `Invalid` when the run has not finished; `Conflict` when it is at
    /// another version; `NotFound`.
    pub async fn rerun(&self, id: &str, expected_version: Option<u64>) -> Result<u64, ClientError> {
        self.rerun_tasks(id, expected_version, &[]).await
    }

    /// [`Client::rerun`], also running `tasks` again although they
    /// succeeded, with everything downstream of them.
    ///
    /// # Errors
    /// As [`Client::rerun`]; `Invalid` naming `tasks[i]` for a name that is
    /// not a task of the run.
    pub async fn rerun_tasks(
        &self,
        id: &str,
        expected_version: Option<u64>,
        tasks: &[String],
    ) -> Result<u64, ClientError> {
        let r = self
            .runs
            .clone()
            .rerun(v1::RerunRequest {
                id: id.to_string(),
                expected_version: expected_version.unwrap_or(0),
                tasks: tasks.to_vec(),
            })
            .await?
            .into_inner();
        Ok(r.version)
    }
}

impl Client {
    /// A run's task logs as [`LogQuery`] selects them (through the
    /// server's `Logs`): with `follow`, the stream ends when the selected
    /// attempts have; without, with what exists now.
    ///
    /// # Errors
    /// In the stream: `NotFound` for an unknown run, task or attempt;
    /// `Unavailable` when the server stops or cannot be reached.
    pub fn logs(&self, query: LogQuery) -> BoxStream<'static, Result<LogChunk, ClientError>> {
        let mut runs = self.runs.clone();
        let request = v1::LogsRequest {
            id: query.run.to_string(),
            task: query.task.unwrap_or_default(),
            attempt: query.attempt.unwrap_or(0),
            follow: query.follow,
        };
        futures::stream::once(async move { runs.logs(request).await })
            .flat_map(|answer| match answer {
                Ok(chunks) => chunks
                    .into_inner()
                    .map(|c| {
                        c.map(|c| LogChunk {
                            task: c.task,
                            attempt: c.attempt,
                            step: (!c.step.is_empty()).then_some(c.step),
                            text: c.text,
                        })
                        .map_err(ClientError::from)
                    })
                    .boxed(),
                Err(status) => futures::stream::iter([Err(ClientError::from(status))]).boxed(),
            })
            .boxed()
    }
}

fn run_id(id: &str) -> Result<RunId, ClientError> {
    RunId::new(id).map_err(|_| {
        ClientError::protocol(format!("the server answered a malformed run id {id:?}"))
    })
}

fn summary_from_proto(r: &v1::RunSummary) -> Result<RunSummary, ClientError> {
    let nonzero = |ms: u64| (ms != 0).then_some(ms);
    Ok(RunSummary {
        id: run_id(&r.id)?,
        repo: r.repo.clone(),
        commit: r.commit.clone(),
        state: super::run_state_from_proto(r.state())
            .ok_or_else(|| ClientError::protocol(format!("run {} has no state", r.id)))?,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
        finished_ms: nonzero(r.finished_ms),
        concurrency_group: None,
    })
}

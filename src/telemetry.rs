//! What every long-running binary (server, worker, operator) shares: log
//! setup, a small HTTP endpoint for Prometheus and Kubernetes probes, the
//! shutdown signal, and the way `main` ends.
//!
//! - [`run_main`] sets up logging, runs the binary's async body on a
//!   multi-threaded runtime and turns a [`Failure`] into the exit status
//!   (2: bad settings, 3: something unavailable);
//! - [`Shutdown`] hands out any number of futures that resolve on
//!   SIGTERM/SIGINT;
//! - [`Endpoint`] binds and serves the HTTP endpoint below and holds the
//!   readiness while the binary works;
//! - [`parse_duration`] is the `clap` value parser of durations (`30s`, `1h`).
//!
//! The endpoint serves
//! - `GET /metrics`: the given registry in the OpenMetrics text format;
//! - `GET /healthz`: `200 ok` while the process serves (liveness);
//! - `GET /readyz`: `200 ready` once [`Health::set_ready`] was called with
//!   `true`, `503 not ready` before and after shutdown began (readiness).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use prometheus_client::{metrics::counter::Counter, registry::Registry};
//! use stagetime::telemetry::{serve_http, shutdown_signal, Health};
//!
//! let mut registry = Registry::default();
//! let jobs: Counter = Counter::default();
//! registry.register("stagetime_jobs", "Jobs done", jobs.clone());
//! let health = Health::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! let http = tokio::spawn(serve_http(listener, Arc::new(registry), health.clone(), shutdown_signal()));
//! health.set_ready(true);
//! jobs.inc();
//! http.await.expect("the endpoint task panicked")?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format {other:?} is not one of \"text\", \"json\""
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filters (default
/// `info`), lines go to stderr in `format`.
///
/// Calling it again (e.g. from several tests in one process) is harmless: the
/// first subscriber stays.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already set, which is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Readiness shared between a binary's main loop and its probe endpoint.
///
/// Cloning shares the flag. A new value starts not ready.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the process ready (or, on shutdown, no longer ready).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the process is ready to take traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct EndpointState {
    registry: Arc<Registry>,
    health: Health,
}

/// The content type of the OpenMetrics text exposition format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` resolves; readiness turns false as soon as it does.
///
/// # Errors
/// The listener's IO errors.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = EndpointState {
        registry,
        health: health.clone(),
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            health.set_ready(false);
        })
        .await
}

async fn metrics(State(state): State<EndpointState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<EndpointState>) -> Response {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Resolves when the process receives SIGTERM (Kubernetes stopping a pod) or
/// SIGINT (Ctrl-C).
///
/// If the handlers cannot be installed it logs why and resolves on Ctrl-C
/// alone, so a binary never stops by surprise.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Why a binary stops early: the exit status and the message it logs.
///
/// [`From<stagetime::Error>`](crate::Error) maps bad input
/// ([`ErrorKind::Invalid`](crate::ErrorKind::Invalid)) to
/// [`Failure::INVALID`] and everything else to [`Failure::UNAVAILABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit status.
    pub code: u8,
    /// What went wrong, logged and printed to stderr as `error: MESSAGE`.
    pub message: String,
}

impl Failure {
    /// Exit status for bad settings or input.
    pub const INVALID: u8 = 2;
    /// Exit status when something needed (a store, the cluster, a port) is
    /// unavailable.
    pub const UNAVAILABLE: u8 = 3;

    /// Bad settings or input: exit status 2.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: Self::INVALID,
            message: message.into(),
        }
    }

    /// Something needed is unavailable: exit status 3.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            code: Self::UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        let code = if e.kind() == crate::ErrorKind::Invalid {
            Self::INVALID
        } else {
            Self::UNAVAILABLE
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A binary's `main`: installs logging in `log_format`, runs `body` to
/// completion on a multi-threaded runtime and returns the exit status:
/// success for `Ok`, the failure's code (after logging its message and
/// printing `error: MESSAGE` to stderr) for `Err`, 3 when the runtime cannot
/// start.
///
/// ```no_run
/// use std::process::ExitCode;
/// use stagetime::telemetry::{Failure, LogFormat, run_main};
///
/// async fn run() -> Result<(), Failure> {
///     Err(Failure::invalid("--port: not a number"))
/// }
///
/// fn main() -> ExitCode {
///     run_main(LogFormat::Text, run())
/// }
/// ```
pub fn run_main<T: ExitStatus>(
    log_format: LogFormat,
    body: impl Future<Output = Result<T, Failure>>,
) -> ExitCode {
    init_logging(log_format);
    run_to_exit(body)
}

/// A command-line tool's `main`: like [`run_main`], but quiet by default
/// (warnings only; `STAGETIME_LOG` sets the filter, e.g. `debug`) and the
/// body's `u8` is the exit status (e.g. 1: the run failed).
pub fn run_cli<T: ExitStatus>(
    log_format: LogFormat,
    body: impl Future<Output = Result<T, Failure>>,
) -> ExitCode {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("STAGETIME_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    run_to_exit(body)
}

/// What a successful `main` body ends with: nothing (exit 0) or a status.
pub trait ExitStatus {
    /// The process exit status.
    fn exit_code(self) -> ExitCode;
}

impl ExitStatus for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl ExitStatus for u8 {
    fn exit_code(self) -> ExitCode {
        ExitCode::from(self)
    }
}

fn run_to_exit<T: ExitStatus>(body: impl Future<Output = Result<T, Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(Failure::UNAVAILABLE);
        }
    };
    match runtime.block_on(body) {
        Ok(status) => status.exit_code(),
        Err(Failure { code, message }) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Parses a duration such as `30s`, `5m` or `1h 30m` (the `humantime`
/// format), for `clap`'s `value_parser`.
///
/// # Errors
/// Why the text is not a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A cloneable handle on the process's shutdown: every [`Shutdown::wait`]
/// future resolves once the trigger (by default [`shutdown_signal`]) has.
///
/// The waits also resolve when the task watching the trigger is gone (the
/// runtime shutting down), so nothing waits forever.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stopped: watch::Receiver<bool>,
}

impl Shutdown {
    /// Shutdown on SIGTERM or SIGINT ([`shutdown_signal`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the task watching the signals).
    pub fn on_signal() -> Self {
        Self::on(shutdown_signal())
    }

    /// Shutdown once `trigger` resolves.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the task awaiting `trigger`).
    pub fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (stop_tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = stop_tx.send(true);
        });
        Shutdown { stopped }
    }

    /// A future resolving once shutdown began (at once if it already has).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    /// Runs `work` unless shutdown begins first: `Some` of its output, or
    /// `None` (dropping `work`) on shutdown. For what a binary does before
    /// it serves, such as connecting to its store.
    pub async fn unless<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            _ = self.wait() => None,
        }
    }
}

/// Binds a TCP listener on `listen` (`HOST:PORT`; port 0 picks one) and
/// returns it with the address it got.
///
/// # Errors
/// [`Failure::UNAVAILABLE`] naming `listen` when it cannot be bound.
pub async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), Failure> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::unavailable(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::unavailable(e.to_string()))?;
    Ok((listener, addr))
}

/// A binary's running `/metrics`, `/healthz` and `/readyz` endpoint
/// ([`serve_http`]) with its readiness.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    health: Health,
    drain_began: Arc<AtomicBool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Endpoint {
    /// Binds `listen` and serves `registry` there, not ready yet, until
    /// [`Endpoint::ready_while`]'s work ends; readiness drops as soon as
    /// `draining` resolves (shutdown began: the work drains, the endpoint
    /// still answers).
    ///
    /// # Errors
    /// [`Failure::UNAVAILABLE`] when `listen` cannot be bound.
    pub async fn start(
        listen: &str,
        registry: Registry,
        draining: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, Failure> {
        let (listener, addr) = bind(listen).await?;
        let health = Health::default();
        let drain_began = Arc::new(AtomicBool::new(false));
        let (not_ready, began) = (health.clone(), Arc::clone(&drain_began));
        tokio::spawn(async move {
            draining.await;
            began.store(true, Ordering::SeqCst);
            not_ready.set_ready(false);
        });
        let task = tokio::spawn(serve_http(
            listener,
            Arc::new(registry),
            health.clone(),
            std::future::pending(),
        ));
        Ok(Endpoint {
            addr,
            health,
            drain_began,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reports ready while `work` runs, then stops the endpoint and returns
    /// what `work` returned.
    ///
    /// The endpoint lives exactly as long as the work: during a graceful
    /// drain `/readyz` answers 503 and `/metrics` still answers; and when the
    /// work ends on its own (a failure), `/healthz` cannot go on answering
    /// for a process that no longer works.
    pub async fn ready_while<T>(self, work: impl Future<Output = T>) -> T {
        if !self.drain_began.load(Ordering::SeqCst) {
            self.health.set_ready(true);
        }
        let out = work.await;
        self.health.set_ready(false);
        self.task.abort();
        let _ = self.task.await;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_until_shutdown() {
        let mut registry = Registry::default();
        let jobs: Counter = Counter::default();
        registry.register("stagetime_test_jobs", "Jobs done", jobs.clone());
        jobs.inc_by(3);
        let health = Health::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(
            listener,
            Arc::new(registry),
            health.clone(),
            async move {
                let _ = stopped.await;
            },
        ));

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.contains("stagetime_test_jobs_total 3"), "{metrics}");

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!health.is_ready(), "readiness drops when shutdown begins");
    }

    #[test]
    fn failure_maps_invalid_errors_to_2_and_others_to_3() {
        let mut errors = crate::FieldErrors::default();
        errors.push("repo", "required");
        let invalid = Failure::from(crate::Error::Invalid(errors));
        assert_eq!(invalid.code, 2);
        assert!(invalid.message.contains("repo"), "{invalid}");
        let down = Failure::from(crate::Error::unavailable("redis", "connection refused"));
        assert_eq!(down.code, 3);
        assert!(down.message.contains("connection refused"), "{down}");
        assert_eq!(Failure::invalid("x").code, Failure::INVALID);
        assert_eq!(Failure::unavailable("x").code, Failure::UNAVAILABLE);
    }

    #[test]
    fn run_main_exits_with_the_failure_code() {
        assert_eq!(
            run_main(LogFormat::Text, async { Ok(()) }),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_main(LogFormat::Text, async {
                Err::<(), _>(Failure::invalid("bad"))
            }),
            ExitCode::from(2)
        );
        assert_eq!(
            run_main(LogFormat::Text, async {
                Err::<(), _>(Failure::unavailable("down"))
            }),
            ExitCode::from(3)
        );
    }

    #[test]
    fn durations_parse_in_the_humantime_format() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        let err = parse_duration("soon").unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn shutdown_wakes_every_waiter_and_later_ones_at_once() {
        let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::on(async move {
            let _ = triggered.await;
        });
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.clone().wait()))
            .collect();
        let pending = shutdown.unless(std::future::pending::<()>());
        tokio::pin!(pending);
        tokio::select! {
            _ = &mut pending => panic!("shutdown began before the trigger"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        trigger.send(()).unwrap();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        assert_eq!(pending.await, None, "unless gives up on shutdown");
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("a wait after shutdown resolves at once");
        let never = Shutdown::on(std::future::pending());
        assert_eq!(never.unless(async { 7 }).await, Some(7));
    }

    #[tokio::test]
    async fn endpoint_is_ready_only_while_the_work_runs() {
        let (drain, draining) = tokio::sync::oneshot::channel::<()>();
        let endpoint = Endpoint::start("127.0.0.1:0", Registry::default(), async move {
            let _ = draining.await;
        })
        .await
        .unwrap();
        let addr = endpoint.addr();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        let out = endpoint
            .ready_while(async move {
                let ready = get(addr, "/readyz").await;
                // A drain: not ready, but still serving probes and metrics.
                drain.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let draining = get(addr, "/readyz").await;
                let metrics = get(addr, "/metrics").await;
                (ready, draining, metrics)
            })
            .await;
        assert!(out.0.starts_with("HTTP/1.1 200"), "{}", out.0);
        assert!(out.1.starts_with("HTTP/1.1 503"), "{}", out.1);
        assert!(out.2.starts_with("HTTP/1.1 200"), "{}", out.2);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the endpoint stops with the work"
        );
    }

    #[tokio::test]
    async fn bind_names_the_address_it_cannot_use() {
        let (_taken, addr) = bind("127.0.0.1:0").await.unwrap();
        let err = bind(&addr.to_string()).await.unwrap_err();
        assert_eq!(err.code, 3);
        assert!(
            err.message
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }

    #[test]
    fn log_format_parses_and_names_the_bad_value() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("\"xml\""), "{err}");
    }
}

//! Logging and the HTTP endpoint every long-running binary (server,
//! worker, operator) serves for Prometheus and Kubernetes probes; how the
//! process itself runs (exit statuses, shutdown) is in
//! [`runtime`](crate::runtime).
//!
//! - [`init_logging`] installs the `tracing` subscriber ([`LogFormat`]);
//! - [`Endpoint`] binds and serves the HTTP endpoint below and holds the
//!   readiness while the binary works ([`serve_http`] serves it on a
//!   listener of the caller's).
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
//! use stagetime::runtime::shutdown_signal;
//! use stagetime::telemetry::{serve_http, Health};
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
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::runtime::{Failure, bind};

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
    init_logging_from(format, "RUST_LOG", "info");
}

/// Installs logging to stderr in `format`, filtered by the environment
/// variable `filter_env` (`tracing` directives such as `debug` or
/// `stagetime=debug`), or `default` when it is unset or unreadable.
pub fn init_logging_from(format: LogFormat, filter_env: &str, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new(default));
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

    #[test]
    fn log_format_parses_and_names_the_bad_value() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let err = "xml".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("\"xml\""), "{err}");
    }
}

//! The web page for runs and the JSON API it uses, served on the server's
//! HTTP listener (feature `forge`; see docs/web.md).
//!
//! Pages (`/runs`, `/runs/{id}`, `/runs/{id}/tasks/{task}`) are rendered
//! here as HTML; a small script (embedded, no build step) keeps them live
//! through the API's Server-Sent Events streams and sends cancel and rerun.
//! The JSON API (`/api/v1/...`, described by `/api/v1/openapi.json`) reads
//! and changes runs through the same library calls as the gRPC service —
//! [`RunControl`] and [`Store`] — and serves [`RunView`](stagetime_core::view::RunView)
//! as it is. Logs come from a [`LogSource`] when one is configured.
//!
//! Security: with an API token every `/api/` call needs
//! `authorization: Bearer <token>` (pages then carry no run data; the
//! script asks for the token once and keeps it in the tab's session
//! storage). Mutating calls also need `content-type: application/json`, so a
//! cross-site form or image cannot send them and a cross-site script cannot
//! without a CORS preflight this server never grants; no cookie is ever
//! read. In read-only mode cancel and rerun answer 403 and the page shows no
//! buttons.

mod api;
mod hub;
mod pages;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use stagetime_core::control::RunControl;
use stagetime_core::logs::LogSource;
use stagetime_core::store::{RunId, Store};
use tokio::sync::Semaphore;

use crate::grpc::AuthToken;

pub use pages::{render_run_page, render_runs_page};

/// The page's script.
const APP_JS: &str = include_str!("assets/app.js");
/// The page's style sheet.
const STYLE_CSS: &str = include_str!("assets/style.css");
/// The OpenAPI description of the JSON API.
pub const OPENAPI_JSON: &str = include_str!("assets/openapi.json");

/// Default bound on the Server-Sent Events streams open at once.
pub const DEFAULT_MAX_STREAMS: usize = 1_024;

/// What the pages and the JSON API need.
#[derive(Clone)]
pub struct WebState {
    control: RunControl,
    store: Arc<dyn Store>,
    auth: Option<AuthToken>,
    read_only: bool,
    logs: Option<Arc<dyn LogSource>>,
    poll: Duration,
    streams: Arc<Semaphore>,
    stopping: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    branches: Arc<Mutex<std::collections::HashMap<RunId, Option<String>>>>,
    hub: Arc<hub::Hub>,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("read_only", &self.read_only)
            .field("logs", &self.logs.is_some())
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl WebState {
    /// Pages and API over `store`: no token, mutating calls allowed, no
    /// logs, runs polled for changes every 250 ms (as gRPC watches are).
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        WebState {
            control: RunControl::new(Arc::clone(&store)),
            store,
            auth: None,
            read_only: false,
            logs: None,
            poll: Duration::from_millis(250),
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_STREAMS)),
            stopping,
            stop: Arc::new(stop),
            branches: Arc::default(),
            hub: Arc::default(),
        }
    }

    /// Requires `token` on every API call (the gRPC API's token).
    pub fn with_auth(mut self, token: Option<AuthToken>) -> Self {
        self.auth = token;
        self
    }

    /// Refuses cancel and rerun (403) and shows no buttons.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Serves task logs from `logs` (without one the logs endpoint answers 404).
    pub fn with_logs(mut self, logs: Option<Arc<dyn LogSource>>) -> Self {
        self.logs = logs;
        self
    }

    /// How often open streams look for changes (at least 10 ms).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// At most `max` event streams (run, runs list, logs) open at once;
    /// more answer 503.
    pub fn with_max_streams(mut self, max: usize) -> Self {
        self.streams = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// Ends every open event stream when `shutdown` resolves, so that a
    /// graceful shutdown of the listener is not held open by pages. Needs a
    /// tokio runtime.
    pub fn with_shutdown(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let stop = Arc::clone(&self.stop);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        self
    }
}

/// The router of the pages and the JSON API; merge it into the server's
/// HTTP router.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/runs") }))
        .route("/runs", get(pages::runs_page))
        .route("/runs/{id}", get(pages::run_page))
        .route("/runs/{id}/tasks/{task}", get(pages::task_page))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { asset("application/json", OPENAPI_JSON) }),
        )
        .route("/api/v1/runs", get(api::list))
        .route("/api/v1/events/runs", get(api::watch_list))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/runs/{id}/events", get(api::watch_run))
        .route("/api/v1/runs/{id}/logs", get(api::logs))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel))
        .route("/api/v1/runs/{id}/rerun", post(api::rerun))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An `application/problem+json` answer (RFC 9457): the status, the input
/// at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub status: StatusCode,
    pub field: Option<String>,
    pub detail: String,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(f) = self.field {
            body["field"] = f.into();
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            format!("{body}\n"),
        )
            .into_response()
    }
}

/// A [`Problem`]; `field` names the input at fault.
pub(crate) fn problem(
    status: StatusCode,
    field: Option<&str>,
    detail: impl Into<String>,
) -> Problem {
    Problem {
        status,
        field: field.map(str::to_string),
        detail: detail.into(),
    }
}

impl WebState {
    /// The branch of each run in `ids` (remembered: a run's document never changes).
    async fn branches(&self, ids: &[RunId]) -> Vec<Option<String>> {
        let missing: Vec<RunId> = {
            let known = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
            ids.iter()
                .filter(|id| !known.contains_key(*id))
                .cloned()
                .collect()
        };
        let loaded = futures::future::join_all(missing.iter().map(|id| self.control.get(id))).await;
        let mut known = self.branches.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() > 50_000 {
            known.clear();
        }
        for (id, record) in missing.into_iter().zip(loaded) {
            if let Ok(record) = record {
                known.insert(id, record.spec.branch);
            }
        }
        ids.iter()
            .map(|id| known.get(id).cloned().flatten())
            .collect()
    }
}

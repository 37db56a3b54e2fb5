//! The server's HTTP surface (feature `forge`, axum): forge webhooks at
//! `POST /hooks/{github,gitlab,gitea}` and the intake's deliveries at
//! `GET /api/v1/deliveries` (behind the API token when one is set). The
//! web page and its JSON API ([`crate::web::router`]) are merged beside it.
//!
//! A webhook is answered in this order, and nothing is fetched or stored
//! before the signature holds: unknown provider 404; body over the limit
//! 413; missing event or delivery header, malformed JSON or a payload
//! without the documented shape 400; unknown repository 404; missing
//! signature 401, wrong one 403; ping, deletions, closed pull requests,
//! other events and events the triggers filter out 200 (`ignored`); a
//! delivery id seen within its TTL 200 (`duplicate`); otherwise the
//! delivery is recorded in the store and answered 202 (`accepted`). Only a
//! store that cannot be reached gives a 5xx (503).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use stagetime_core::store::{DEFAULT_DELIVERY_TTL, Delivery, DeliveryState, Store};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::forge::config::Repositories;
use crate::forge::event::{parse_gitlab, parse_hub, repository_urls};
use crate::forge::intake::{ForgeMetrics, SharedRepositories};
use crate::forge::signature::{SignatureError, verify_gitea, verify_github, verify_gitlab};
use crate::forge::trigger::{Decision, decide};
use crate::forge::{Parsed, Provider};
use crate::grpc::AuthToken;

/// GitHub's own cap on a webhook payload.
pub const DEFAULT_BODY_LIMIT: usize = 25 << 20;

/// The longest delivery id accepted.
const MAX_DELIVERY_ID: usize = 128;

/// What the HTTP surface needs.
#[derive(Clone)]
pub struct HttpState {
    /// Where deliveries are recorded.
    pub store: Arc<dyn Store>,
    /// The repositories in force.
    pub repos: SharedRepositories,
    /// Webhook metrics.
    pub metrics: ForgeMetrics,
    /// Woken after a delivery was recorded (the intake loop waits on it).
    pub wake: Arc<Notify>,
    /// Largest body accepted (default [`DEFAULT_BODY_LIMIT`]).
    pub body_limit: usize,
    /// How long delivery ids are remembered (default 72 h).
    pub delivery_ttl: Duration,
    /// When set, `GET /api/...` needs `authorization: Bearer <token>`
    /// (webhooks are authenticated by their signatures).
    pub auth: Option<AuthToken>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").finish_non_exhaustive()
    }
}

impl HttpState {
    /// State with the default body limit and TTL and no API token.
    pub fn new(store: Arc<dyn Store>, repos: SharedRepositories, metrics: ForgeMetrics) -> Self {
        HttpState {
            store,
            repos,
            metrics,
            wake: Arc::new(Notify::new()),
            body_limit: DEFAULT_BODY_LIMIT,
            delivery_ttl: DEFAULT_DELIVERY_TTL,
            auth: None,
        }
    }
}

/// The router of the server's HTTP surface.
pub fn router(state: HttpState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/hooks/{provider}", post(hook))
        .route("/api/v1/deliveries", get(deliveries))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// requests in progress finish.
///
/// # Errors
/// The listener's IO errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small answers must not wait for the peer's delayed ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn answer(status: StatusCode, outcome: &str, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({ "status": outcome, "detail": detail.into() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

async fn hook(
    State(state): State<HttpState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(provider) = Provider::parse(&provider) else {
        return answer(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            "use /hooks/github, /hooks/gitlab or /hooks/gitea",
        );
    };
    let name = provider.as_str();
    let m = &state.metrics;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let outcome = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_request"
            };
            m.delivery(name, outcome);
            return answer(status, outcome, e.body_text());
        }
    };
    let Some(event_type) = first_header(&headers, provider.event_headers()) else {
        m.delivery(name, "bad_request");
        return answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("missing header {}", provider.event_headers()[0]),
        );
    };
    let Some(delivery_id) = first_header(&headers, provider.delivery_headers()) else {
        m.delivery(name, "bad_request");
        return answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("missing header {}", provider.delivery_headers()[0]),
        );
    };
    if delivery_id.is_empty()
        || delivery_id.len() > MAX_DELIVERY_ID
        || !delivery_id.bytes().all(|b| b.is_ascii_graphic())
    {
        m.delivery(name, "bad_request");
        return answer(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{} is not a delivery id", provider.delivery_headers()[0]),
        );
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            m.delivery(name, "bad_request");
            return answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let urls = match repository_urls(provider, &payload) {
        Ok(u) => u,
        // An organisation-level ping names no repository: nothing to verify, nothing to do.
        Err(_) if event_type == "ping" => {
            m.delivery(name, "ignored");
            return answer(StatusCode::OK, "ignored", "ping");
        }
        Err(e) => {
            m.delivery(name, "bad_request");
            return answer(StatusCode::BAD_REQUEST, "bad_request", e);
        }
    };
    let repos = Arc::clone(&*state.repos.read().await);
    let Some(repo) = repos.find(provider, &urls) else {
        m.delivery(name, "unknown_repository");
        debug!(provider = name, urls = ?urls, "webhook for an unknown repository");
        return answer(
            StatusCode::NOT_FOUND,
            "unknown_repository",
            "this repository is not in the repositories file",
        );
    };
    let secret = repo.webhook_secret.expose();
    let verified = match provider {
        Provider::Github => verify_github(
            secret,
            &body,
            first_header(&headers, &["x-hub-signature-256"]),
        ),
        Provider::Gitea => verify_gitea(
            secret,
            &body,
            first_header(&headers, &["x-gitea-signature", "x-forgejo-signature"]),
        ),
        Provider::Gitlab => verify_gitlab(secret, first_header(&headers, &["x-gitlab-token"])),
    };
    match verified {
        Ok(()) => {}
        Err(SignatureError::Missing) => {
            m.delivery(name, "unauthorized");
            warn!(provider = name, repo = %repo.name, delivery = delivery_id, "webhook without a signature");
            return answer(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing signature",
            );
        }
        Err(SignatureError::Mismatch) => {
            m.delivery(name, "forbidden");
            warn!(provider = name, repo = %repo.name, delivery = delivery_id, "webhook with a wrong signature");
            return answer(StatusCode::FORBIDDEN, "forbidden", "wrong signature");
        }
    }
    let parsed = match provider {
        Provider::Gitlab => parse_gitlab(event_type, delivery_id, payload),
        _ => parse_hub(provider, event_type, delivery_id, payload),
    };
    let event = match parsed {
        Ok(Parsed::Event(e)) => e,
        Ok(Parsed::Command(c)) => {
            // Who may command is asked of the forge by the intake, after
            // the answer (the forge's API may be slow).
            let what = format!("{} on #{} by {}", c.command.text(), c.pr, c.commenter);
            return match serde_json::to_string(&c) {
                Ok(encoded) => {
                    record(&state, provider, &repo.name, delivery_id, encoded, what).await
                }
                Err(e) => {
                    m.delivery(name, "bad_request");
                    answer(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("the command cannot be encoded: {e}"),
                    )
                }
            };
        }
        Ok(Parsed::Ignored(why)) => {
            m.delivery(name, "ignored");
            debug!(provider = name, repo = %repo.name, delivery = delivery_id, reason = %why, "webhook ignored");
            return answer(StatusCode::OK, "ignored", why);
        }
        Err(e) => {
            m.delivery(name, "bad_request");
            return answer(StatusCode::BAD_REQUEST, "bad_request", e);
        }
    };
    if let Decision::Skip(why) = decide(repo, &event) {
        m.delivery(name, "ignored");
        debug!(provider = name, repo = %repo.name, delivery = delivery_id, reason = %why, "webhook filtered out");
        return answer(StatusCode::OK, "ignored", why);
    }
    let encoded = match serde_json::to_string(&event) {
        Ok(s) => s,
        Err(e) => {
            m.delivery(name, "bad_request");
            return answer(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the event cannot be encoded: {e}"),
            );
        }
    };
    let what = format!("{} of {}", event.kind.as_str(), event.commit);
    record(&state, provider, &repo.name, delivery_id, encoded, what).await
}

/// Records a verified delivery (an event or a command, encoded) and
/// answers: 202 when new, 200 `duplicate` when seen, 503 when the store
/// is unavailable.
async fn record(
    state: &HttpState,
    provider: Provider,
    repo: &str,
    delivery_id: &str,
    encoded: String,
    what: String,
) -> Response {
    let name = provider.as_str();
    let m = &state.metrics;
    let delivery = Delivery {
        id: format!("{name}:{delivery_id}"),
        repo: repo.to_string(),
        received_ms: now_ms(),
        event: encoded,
        state: DeliveryState::Pending,
        message: None,
        runs: Vec::new(),
    };
    let id = delivery.id.clone();
    match state
        .store
        .record_delivery(delivery, state.delivery_ttl)
        .await
    {
        Ok(true) => {
            m.delivery(name, "accepted");
            state.wake.notify_one();
            info!(provider = name, repo, delivery = %id, event = %what, "webhook accepted");
            answer(StatusCode::ACCEPTED, "accepted", id)
        }
        Ok(false) => {
            m.delivery(name, "duplicate");
            info!(provider = name, repo, delivery = %id, "webhook delivery seen before");
            answer(StatusCode::OK, "duplicate", id)
        }
        Err(e) => {
            m.delivery(name, "unavailable");
            error!(provider = name, delivery = %id, error = %e, "cannot record a webhook delivery");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is unavailable; the forge will retry or redeliver",
            )
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    repo: Option<String>,
}

async fn deliveries(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(token) = &state.auth {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !token.accepts(given) {
            return answer(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
        }
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    // Filters apply to the newest 1,000 remembered deliveries.
    let scan = if q.state.is_some() || q.repo.is_some() {
        1000
    } else {
        limit
    };
    match state.store.list_deliveries(scan).await {
        Ok(list) => {
            let list: Vec<Delivery> = list
                .into_iter()
                .filter(|d| q.state.as_deref().is_none_or(|s| d.state.as_str() == s))
                .filter(|d| q.repo.as_deref().is_none_or(|r| d.repo == r))
                .take(limit)
                .collect();
            let body = serde_json::json!({ "deliveries": list });
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{body}\n"),
            )
                .into_response()
        }
        Err(e) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Keeps `repos` in step with the file at `path`: re-reads it every
/// `every` and on SIGHUP, and swaps in a new version only when it is valid
/// (every problem of a bad one is logged; the previous one stays in force).
/// Secrets are read again with each new version (and on SIGHUP).
pub async fn watch_repos(
    path: PathBuf,
    repos: SharedRepositories,
    every: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut last = std::fs::read(&path).ok();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        #[cfg(not(unix))]
        let forced = tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => false,
        };
        let now = std::fs::read(&path).ok();
        if !forced && now == last {
            continue;
        }
        last = now;
        match Repositories::load(&path) {
            Ok(new) => {
                info!(file = %path.display(), repositories = new.all().len(), "repositories file reloaded");
                *repos.write().await = Arc::new(new);
            }
            Err(e) => {
                error!(file = %path.display(), problems = %e, "repositories file refused; the previous one stays in force");
            }
        }
    }
}

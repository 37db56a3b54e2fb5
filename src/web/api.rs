//! The JSON API: list, get, watch (SSE), logs (SSE while following),
//! cancel, rerun. Every input is bounded and checked before anything is
//! read or changed; a client mistake is a 4xx problem naming the field.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use stagetime_core::error::cut;
use stagetime_core::logs::{LogChunk, LogQuery};
use stagetime_core::store::{RunFilter, RunId, RunState, RunSummary};
use stagetime_core::{Error, ErrorKind};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use super::hub::Polled;
use super::{Problem, WebState, pages, problem};

/// Longest filter value, cursor or task name accepted.
const MAX_TEXT: usize = 256;
/// Most runs in one page of the list.
pub(crate) const MAX_PAGE: usize = 200;
/// Runs in a page of the list when `limit` is not given.
pub(crate) const DEFAULT_PAGE: usize = 50;
/// Largest request body of cancel and rerun.
const MAX_BODY: usize = 4096;
/// Most log text returned by one non-following read.
const MAX_LOG_BYTES: usize = 4 << 20;
/// Highest attempt number accepted.
const MAX_ATTEMPT: u32 = 10_000;

/// One run of the list: the store's summary and the document's branch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RunItem {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub branch: Option<String>,
}

/// A page of the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RunList {
    pub runs: Vec<RunItem>,
    pub next: Option<String>,
}

/// How a stream's events are written: JSON for programs, HTML for the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Html,
}

pub(crate) fn authorize(state: &WebState, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(token) = &state.auth else {
        return Ok(());
    };
    match headers.get(header::AUTHORIZATION) {
        Some(v) if token.accepts(v.as_bytes()) => Ok(()),
        Some(_) => Err(problem(
            StatusCode::UNAUTHORIZED,
            Some("authorization"),
            "invalid bearer token",
        )),
        None => Err(problem(
            StatusCode::UNAUTHORIZED,
            Some("authorization"),
            "missing `authorization: Bearer <token>` header",
        )),
    }
}

/// The query parameters, each at most once and each one of `allowed`.
pub(crate) fn params(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, Problem> {
    let Query(pairs) = query.map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            Some("query"),
            format!("the query string cannot be read: {}", e.body_text()),
        )
    })?;
    let mut out = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                Some(&cut(&k, 64)),
                format!(
                    "unknown query parameter {:?}; known: {}",
                    cut(&k, 64),
                    allowed.join(", ")
                ),
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                Some(&k),
                "given more than once",
            ));
        }
    }
    Ok(out)
}

pub(crate) fn run_id(id: &str) -> Result<RunId, Problem> {
    RunId::new(id).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            Some("id"),
            format!(
                "{:?} is not a valid run id (1-63 of a-z, 0-9, '-', '.')",
                cut(id, 80)
            ),
        )
    })
}

fn text_param(p: &HashMap<String, String>, field: &str) -> Result<Option<String>, Problem> {
    match p.get(field) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > MAX_TEXT => Err(problem(
            StatusCode::BAD_REQUEST,
            Some(field),
            format!("longer than {MAX_TEXT} bytes"),
        )),
        Some(v) => Ok(Some(v.clone())),
    }
}

fn bool_param(p: &HashMap<String, String>, field: &str) -> Result<bool, Problem> {
    match p.get(field).map(String::as_str) {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(v) => Err(problem(
            StatusCode::BAD_REQUEST,
            Some(field),
            format!("{:?} is not true or false", cut(v, 40)),
        )),
    }
}

pub(crate) fn format_param(p: &HashMap<String, String>) -> Result<Format, Problem> {
    match p.get("format").map(String::as_str) {
        None | Some("" | "json") => Ok(Format::Json),
        Some("html") => Ok(Format::Html),
        Some(v) => Err(problem(
            StatusCode::BAD_REQUEST,
            Some("format"),
            format!("{:?} is not json or html", cut(v, 40)),
        )),
    }
}

/// The list filter from `repo`, `commit`, `group`, `state` (comma-separated),
/// `limit` and `after`.
pub(crate) fn filter_of(p: &HashMap<String, String>) -> Result<RunFilter, Problem> {
    let mut filter = RunFilter {
        repo: text_param(p, "repo")?,
        commit: text_param(p, "commit")?,
        concurrency_group: text_param(p, "group")?,
        after: text_param(p, "after")?,
        limit: DEFAULT_PAGE,
        ..RunFilter::default()
    };
    if let Some(states) = text_param(p, "state")? {
        for s in states.split(',').filter(|s| !s.is_empty()) {
            let state = RunState::parse(s).ok_or_else(|| {
                problem(
                    StatusCode::BAD_REQUEST,
                    Some("state"),
                    format!(
                        "{:?} is not a run state (queued, running, succeeded, failed, cancelled)",
                        cut(s, 40)
                    ),
                )
            })?;
            if !filter.states.contains(&state) {
                filter.states.push(state);
            }
        }
    }
    if let Some(limit) = p.get("limit").filter(|l| !l.is_empty()) {
        filter.limit = match limit.parse::<usize>() {
            Ok(n @ 1..=MAX_PAGE) => n,
            _ => {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    Some("limit"),
                    format!("{:?} is not a number from 1 to {MAX_PAGE}", cut(limit, 40)),
                ));
            }
        };
    }
    Ok(filter)
}

/// The answer to a store or library error: 404, 409, 503; 500 only for
/// what is wrong on the server's side.
pub(crate) fn error_problem(e: &Error, field: Option<&str>) -> Problem {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, field, e.to_string())
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string()).into_response(),
    }
}

pub(crate) async fn list_page(state: &WebState, filter: &RunFilter) -> Result<RunList, Problem> {
    let page = state
        .store
        .list_runs(filter)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::Invalid => problem(
                StatusCode::BAD_REQUEST,
                Some("after"),
                "not a cursor returned by the list",
            ),
            _ => error_problem(&e, None),
        })?;
    let ids: Vec<RunId> = page.runs.iter().map(|r| r.id.clone()).collect();
    let branches = state.branches(&ids).await;
    Ok(RunList {
        runs: page
            .runs
            .into_iter()
            .zip(branches)
            .map(|(summary, branch)| RunItem { summary, branch })
            .collect(),
        next: page.next,
    })
}

/// `GET /api/v1/runs`.
pub(crate) async fn list(
    State(state): State<WebState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    {
        authorize(&state, &headers)?;
        let p = params(
            query,
            &["repo", "commit", "group", "state", "limit", "after"],
        )?;
        let filter = filter_of(&p)?;
        let page = list_page(&state, &filter).await?;
        Ok(json(StatusCode::OK, &page))
    }
}

/// `GET /api/v1/runs/{id}`.
pub(crate) async fn get_run(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    {
        authorize(&state, &headers)?;
        params(query, &[])?;
        let id = run_id(&id)?;
        let view = state
            .control
            .view(&id)
            .await
            .map_err(|e| error_problem(&e, Some("id")))?;
        Ok(json(StatusCode::OK, &view))
    }
}

fn acquire(state: &WebState) -> Result<OwnedSemaphorePermit, Problem> {
    std::sync::Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| {
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "too many event streams open on this server; retry later",
            )
        })
}

fn sse(stream: BoxStream<'static, Event>) -> Response {
    Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn error_event(e: &Error) -> Event {
    let body = serde_json::json!({"status": 503, "detail": e.to_string()});
    Event::default().event("error").data(body.to_string())
}

struct RunWatch {
    rx: tokio::sync::watch::Receiver<Polled>,
    format: Format,
    last_version: u64,
    fresh: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

/// The next version of the run from its shared poller ([`super::hub`]).
/// Ends after a finished run was sent, on an error, or at shutdown.
async fn run_watch_step(mut s: RunWatch) -> Option<(Event, RunWatch)> {
    if s.done {
        return None;
    }
    loop {
        if !s.fresh && s.rx.changed().await.is_err() {
            return None;
        }
        s.fresh = false;
        let polled = s.rx.borrow_and_update().clone();
        let snapshot = match polled {
            Polled::Run(snapshot) => snapshot,
            Polled::Failed(message) => {
                s.done = true;
                let body = serde_json::json!({"status": 503, "detail": message});
                return Some((Event::default().event("error").data(body.to_string()), s));
            }
            Polled::Stopped => return None,
        };
        let view = match &snapshot.view {
            Ok(view) => view,
            Err(message) => {
                s.done = true;
                let body = serde_json::json!({"status": 500, "detail": message});
                return Some((Event::default().event("error").data(body.to_string()), s));
            }
        };
        if view.version == s.last_version {
            continue;
        }
        s.last_version = view.version;
        s.done = view.state.is_finished();
        let data = match s.format {
            Format::Json => snapshot.json(view),
            Format::Html => snapshot.html(view),
        };
        let event = Event::default()
            .event("run")
            .id(view.version.to_string())
            .data(data);
        return Some((event, s));
    }
}

/// `GET /api/v1/runs/{id}/events`.
pub(crate) async fn watch_run(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    {
        authorize(&state, &headers)?;
        let p = params(query, &["format"])?;
        let format = format_param(&p)?;
        let id = run_id(&id)?;
        let permit = acquire(&state)?;
        let first = state
            .control
            .get(&id)
            .await
            .map_err(|e| error_problem(&e, Some("id")))?;
        let watch = RunWatch {
            rx: state.hub.subscribe(&state, &id, &first),
            format,
            last_version: 0,
            fresh: true,
            done: false,
            _permit: permit,
        };
        Ok(sse(futures::stream::unfold(watch, run_watch_step).boxed()))
    }
}

struct ListWatch {
    state: WebState,
    filter: RunFilter,
    format: Format,
    last: Option<RunList>,
    first: bool,
    _permit: OwnedSemaphorePermit,
}

fn list_event(list: &RunList, format: Format) -> Event {
    let data = match format {
        Format::Json => serde_json::to_string(list).unwrap_or_default(),
        Format::Html => pages::runs_rows(&list.runs, pages::now_ms()),
    };
    Event::default().event("runs").data(data)
}

/// The list again whenever it changed (polled every four watch polls).
async fn list_watch_step(mut s: ListWatch) -> Option<(Event, ListWatch)> {
    loop {
        if !s.first {
            let mut stopping = s.state.stopping.clone();
            let stopped = tokio::select! {
                _ = tokio::time::sleep(s.state.poll * 4) => false,
                _ = stopping.wait_for(|stop| *stop) => true,
            };
            if stopped {
                return None;
            }
        }
        s.first = false;
        let list = match list_page(&s.state, &s.filter).await {
            Ok(l) => l,
            // The store is away: the page keeps what it shows and the next poll tries again.
            Err(_) => continue,
        };
        if s.last.as_ref() == Some(&list) {
            continue;
        }
        let event = list_event(&list, s.format);
        s.last = Some(list);
        return Some((event, s));
    }
}

/// `GET /api/v1/events/runs`.
pub(crate) async fn watch_list(
    State(state): State<WebState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    {
        authorize(&state, &headers)?;
        let p = params(
            query,
            &["repo", "commit", "group", "state", "limit", "format"],
        )?;
        let filter = filter_of(&p)?;
        let format = format_param(&p)?;
        let permit = acquire(&state)?;
        // A bad filter is refused now, not in the stream.
        let first = list_page(&state, &filter).await?;
        let event = list_event(&first, format);
        let watch = ListWatch {
            state,
            filter,
            format,
            last: Some(first),
            first: false,
            _permit: permit,
        };
        let rest = futures::stream::unfold(watch, list_watch_step);
        Ok(sse(futures::stream::once(async { event })
            .chain(rest)
            .boxed()))
    }
}

/// `GET /api/v1/runs/{id}/logs?task=&attempt=&follow=`.
pub(crate) async fn logs(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    {
        authorize(&state, &headers)?;
        let p = params(query, &["task", "attempt", "follow"])?;
        let id = run_id(&id)?;
        let task = text_param(&p, "task")?;
        let attempt = match p.get("attempt") {
            None => None,
            Some(a) => match a.parse::<u32>() {
                Ok(n @ 1..=MAX_ATTEMPT) => Some(n),
                _ => {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        Some("attempt"),
                        format!("{:?} is not a number from 1 to {MAX_ATTEMPT}", cut(a, 40)),
                    ));
                }
            },
        };
        let follow = bool_param(&p, "follow")?;
        let view = state
            .control
            .view(&id)
            .await
            .map_err(|e| error_problem(&e, Some("id")))?;
        if let Some(name) = &task
            && view.task(name).is_none()
        {
            return Err(problem(
                StatusCode::NOT_FOUND,
                Some("task"),
                format!("run {id} has no task {:?}", cut(name, 80)),
            ));
        }
        let Some(source) = state.logs.clone() else {
            return Err(problem(
                StatusCode::NOT_FOUND,
                None,
                "this server has no log source configured: it serves no logs",
            ));
        };
        let permit = if follow { Some(acquire(&state)?) } else { None };
        let query = LogQuery {
            run: id,
            task,
            attempt,
            follow,
        };
        let stream = source.open(query).await.map_err(|e| match &e {
            Error::Unsupported { .. } => problem(StatusCode::NOT_IMPLEMENTED, None, e.to_string()),
            _ => error_problem(&e, None),
        })?;
        if follow {
            let stopping = state.stopping.clone();
            Ok(follow_logs(stream, stopping, permit))
        } else {
            Ok(collect_logs(stream).await)
        }
    }
}

/// Chunks as `chunk` events, then one `end` event (or `error`).
fn follow_logs(
    stream: BoxStream<'static, stagetime_core::Result<LogChunk>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    permit: Option<OwnedSemaphorePermit>,
) -> Response {
    let events = futures::stream::unfold((Some(stream), permit), move |(stream, permit)| {
        let mut stopping = stopping.clone();
        async move {
            let mut stream = stream?;
            let item = tokio::select! {
                item = stream.next() => item,
                _ = stopping.wait_for(|s| *s) => return None,
            };
            match item {
                Some(Ok(chunk)) => {
                    let data = serde_json::to_string(&chunk).unwrap_or_default();
                    Some((
                        Event::default().event("chunk").data(data),
                        (Some(stream), permit),
                    ))
                }
                Some(Err(e)) => Some((error_event(&e), (None, permit))),
                None => Some((Event::default().event("end").data("{}"), (None, permit))),
            }
        }
    });
    sse(events.boxed())
}

/// What exists now, as one JSON document (at most 4 MiB of text).
async fn collect_logs(
    mut stream: BoxStream<'static, stagetime_core::Result<LogChunk>>,
) -> Response {
    let mut chunks = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                bytes += chunk.text.len();
                if bytes > MAX_LOG_BYTES {
                    truncated = true;
                    break;
                }
                chunks.push(chunk);
            }
            Err(e) => return error_problem(&e, None).into_response(),
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "chunks": chunks, "truncated": truncated }),
    )
}

/// Checks what every mutating call must carry: the token, the JSON content
/// type (what makes the call CSRF-safe) and a JSON object of known fields.
fn mutation(
    state: &WebState,
    headers: &HeaderMap,
    body: &Bytes,
    fields: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>, Problem> {
    authorize(state, headers)?;
    if state.read_only {
        return Err(problem(
            StatusCode::FORBIDDEN,
            None,
            "this server is read-only: runs cannot be cancelled or rerun here",
        ));
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("content-type"),
            "send `content-type: application/json` with a JSON object body",
        ));
    }
    if body.len() > MAX_BODY {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!("longer than {MAX_BODY} bytes"),
        ));
    }
    let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            problem(
                StatusCode::BAD_REQUEST,
                Some("body"),
                format!("not JSON: {e}"),
            )
        })?
    };
    let serde_json::Value::Object(map) = value else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            Some("body"),
            "must be a JSON object",
        ));
    };
    if let Some(k) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            Some(&cut(k, 64)),
            format!("unknown field {:?}", cut(k, 64)),
        ));
    }
    Ok(map)
}

/// `POST /api/v1/runs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    {
        params(query, &[])?;
        mutation(&state, &headers, &body, &[])?;
        let id = run_id(&id)?;
        state
            .control
            .cancel(&id)
            .await
            .map_err(|e| error_problem(&e, Some("id")))?;
        info!(run = %id, "cancel requested (web)");
        Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "id": id, "status": "cancel_requested" }),
        ))
    }
}

/// `POST /api/v1/runs/{id}/rerun`.
pub(crate) async fn rerun(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    {
        params(query, &[])?;
        let map = mutation(&state, &headers, &body, &["expected_version"])?;
        let expected = match map.get("expected_version") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    return Err(problem(
                        StatusCode::BAD_REQUEST,
                        Some("expected_version"),
                        "must be a positive integer (the run's version)",
                    ));
                }
            },
        };
        let id = run_id(&id)?;
        let version = state.control.rerun(&id, expected).await.map_err(|e| {
            match e.kind() {
                // Not finished yet: the run's state is in the way, not the input's form.
                ErrorKind::Invalid => problem(StatusCode::CONFLICT, Some("id"), e.to_string()),
                ErrorKind::Conflict => problem(
                    StatusCode::CONFLICT,
                    Some("expected_version"),
                    e.to_string(),
                ),
                _ => error_problem(&e, Some("id")),
            }
        })?;
        info!(run = %id, version, "rerun requested (web)");
        Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "id": id, "version": version }),
        ))
    }
}

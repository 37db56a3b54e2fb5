//! Server-rendered pages: the runs list, a run (stage graph, task table,
//! log pane, buttons) and a task of a run. The live parts are rendered by
//! the same functions for the first answer and for the `format=html`
//! events that keep them current.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use stagetime_core::error::cut;
use stagetime_core::view::{RunView, TaskView};

use super::api::{self, RunItem};
use super::{Problem, WebState};

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `s` escaped for HTML text and attribute values.
fn esc(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` as a URL path segment (run ids are safe already; task names may not be).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `1h 2m`, `3m 4s`, `5s`, `120ms`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn time_tag(ms: u64) -> String {
    format!("<time datetime=\"{ms}\">{} UTC</time>", utc(ms))
}

/// The whole document around `main`.
fn layout(state: &WebState, title: &str, attrs: &str, main: &str) -> String {
    let auth = if state.auth.is_some() {
        "required"
    } else {
        "none"
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · stagetime</title><link rel=\"stylesheet\" href=\"/assets/style.css\">\
<script src=\"/assets/app.js\" defer></script></head>\
<body data-auth=\"{auth}\" data-read-only=\"{ro}\" {attrs}>\
<header class=\"top\"><nav aria-label=\"site\"><a href=\"/runs\">stagetime runs</a></nav></header>\
<form id=\"login\" hidden><label>API token <input type=\"password\" id=\"token\" autocomplete=\"off\" required></label> \
<button type=\"submit\">Use token</button><p>The token is kept in this tab only (session storage).</p></form>\
<p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\
<main>{main}</main></body></html>\n",
        title = esc(title),
        ro = state.read_only,
    )
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_page(state: &WebState, status: StatusCode, message: &str) -> Response {
    let main = format!(
        "<h1>{}</h1><p class=\"problem\">{}</p><p><a href=\"/runs\">All runs</a></p>",
        status.as_u16(),
        esc(message)
    );
    html(status, layout(state, "error", "", &main))
}

/// What a page says for an API problem.
fn detail_of(problem: Problem) -> (StatusCode, String) {
    let detail = match problem.field {
        Some(f) => format!("{f}: {}", problem.detail),
        None => problem.detail,
    };
    (problem.status, detail)
}

/// The rows of the runs table.
pub(crate) fn runs_rows(runs: &[RunItem], now: u64) -> String {
    let mut out = String::with_capacity(runs.len() * 400);
    if runs.is_empty() {
        out.push_str("<tr><td colspan=\"7\">No runs.</td></tr>");
    }
    for r in runs {
        let s = &r.summary;
        let end = s.finished_ms.unwrap_or(now);
        let _ = write!(
            out,
            "<tr data-run=\"{id}\"><td><a href=\"/runs/{id}\">{id}</a></td><td>{repo}</td>\
<td>{branch}</td><td><code title=\"{commit}\">{short}</code></td>\
<td><span class=\"state st-{state}\">{state}</span></td>\
<td>{age} ago</td><td>{dur}</td></tr>",
            id = esc(s.id.as_str()),
            repo = esc(&s.repo),
            branch = esc(r.branch.as_deref().unwrap_or("")),
            commit = esc(&s.commit),
            short = esc(&cut(&s.commit, 12)),
            state = s.state.as_str(),
            age = duration(now.saturating_sub(s.created_ms)),
            dur = duration(end.saturating_sub(s.created_ms)),
        );
    }
    out
}

/// `GET /runs`.
pub(crate) async fn runs_page(
    State(state): State<WebState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let p = match api::params(query, &["repo", "commit", "group", "state", "limit"]) {
        Ok(p) => p,
        Err(problem) => {
            let (status, detail) = detail_of(problem);
            return error_page(&state, status, &detail);
        }
    };
    let filter = match api::filter_of(&p) {
        Ok(f) => f,
        Err(problem) => {
            let (status, detail) = detail_of(problem);
            return error_page(&state, status, &detail);
        }
    };
    let rows = if state.auth.is_some() {
        "<tr><td colspan=\"7\">Loading…</td></tr>".to_string()
    } else {
        match api::list_page(&state, &filter).await {
            Ok(list) => runs_rows(&list.runs, now_ms()),
            Err(problem) => {
                let (status, detail) = detail_of(problem);
                return error_page(&state, status, &detail);
            }
        }
    };
    let main = render_runs_main(&p, &rows);
    html(
        StatusCode::OK,
        layout(&state, "runs", "data-page=\"runs\"", &main),
    )
}

fn render_runs_main(p: &HashMap<String, String>, rows: &str) -> String {
    let value = |k: &str| esc(p.get(k).map(String::as_str).unwrap_or("")).into_owned();
    let state_now = p.get("state").map(String::as_str).unwrap_or("");
    let mut options = String::from("<option value=\"\">any</option>");
    for s in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let sel = if s == state_now { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{s}\"{sel}>{s}</option>");
    }
    format!(
        "<h1>Runs</h1>\
<form class=\"filters\" method=\"get\" action=\"/runs\" aria-label=\"filters\">\
<label>Repository <input name=\"repo\" value=\"{repo}\" maxlength=\"256\"></label>\
<label>Commit <input name=\"commit\" value=\"{commit}\" maxlength=\"256\"></label>\
<label>State <select name=\"state\">{options}</select></label>\
<button type=\"submit\">Filter</button></form>\
<div class=\"scroll\"><table id=\"runs\"><caption>Newest first; updates live.</caption>\
<thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Repository</th><th scope=\"col\">Branch</th>\
<th scope=\"col\">Commit</th><th scope=\"col\">State</th><th scope=\"col\">Age</th>\
<th scope=\"col\">Duration</th></tr></thead><tbody id=\"runs-body\">{rows}</tbody></table></div>",
        repo = value("repo"),
        commit = value("commit"),
    )
}

/// The runs page for `runs` (what `GET /runs` answers without a token;
/// public for benchmarks).
pub fn render_runs_page(state: &WebState, runs: &[stagetime_core::store::RunSummary]) -> String {
    let items: Vec<RunItem> = runs
        .iter()
        .map(|s| RunItem {
            summary: s.clone(),
            branch: None,
        })
        .collect();
    let main = render_runs_main(&HashMap::new(), &runs_rows(&items, now_ms()));
    layout(state, "runs", "data-page=\"runs\"", &main)
}

const COL_W: u32 = 230;
const BOX_W: u32 = 190;
const BOX_H: u32 = 46;
const ROW_H: u32 = 60;
const TOP: u32 = 36;

/// Where each task's box is: (column, row).
fn positions(view: &RunView) -> HashMap<&str, (u32, u32)> {
    let mut at = HashMap::with_capacity(view.tasks.len());
    for (col, stage) in view.stages.iter().enumerate() {
        for (row, name) in stage.tasks.iter().enumerate() {
            at.insert(name.as_str(), (col as u32, row as u32));
        }
    }
    at
}

fn attempts(t: &TaskView) -> String {
    if t.retries > 0 {
        format!("attempt {}/{}", t.attempt, t.retries + 1)
    } else if t.attempt > 1 {
        format!("attempt {}", t.attempt)
    } else {
        String::new()
    }
}

/// The stage graph: stages as columns, tasks as boxes (state as colour and
/// as text), `needs` as edges.
fn graph(view: &RunView, out: &mut String) {
    let at = positions(view);
    let rows = view.stages.iter().map(|s| s.tasks.len()).max().unwrap_or(0) as u32;
    let width = (view.stages.len() as u32).max(1) * COL_W;
    let height = TOP + rows.max(1) * ROW_H;
    let _ = write!(
        out,
        "<figure class=\"graph\"><div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" \
width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"group\" \
aria-labelledby=\"graph-caption\">"
    );
    for (col, stage) in view.stages.iter().enumerate() {
        let x = col as u32 * COL_W + 10;
        let _ = write!(
            out,
            "<text class=\"stage-label\" x=\"{x}\" y=\"20\">{} · {}</text>",
            stage.label(),
            stage.phase.as_str()
        );
    }
    for t in &view.tasks {
        let Some(&(col, row)) = at.get(t.name.as_str()) else {
            continue;
        };
        for need in &t.needs {
            if let Some(&(ncol, nrow)) = at.get(need.as_str()) {
                let (x1, y1) = (ncol * COL_W + 10 + BOX_W, TOP + nrow * ROW_H + BOX_H / 2);
                let (x2, y2) = (col * COL_W + 10, TOP + row * ROW_H + BOX_H / 2);
                let mid = (x1 + x2) / 2;
                let _ = write!(
                    out,
                    "<path class=\"edge\" d=\"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}\"><title>{} needs {}</title></path>",
                    esc(&t.name),
                    esc(need)
                );
            }
        }
    }
    for t in &view.tasks {
        let Some(&(col, row)) = at.get(t.name.as_str()) else {
            continue;
        };
        let (x, y) = (col * COL_W + 10, TOP + row * ROW_H);
        let status = t.status.as_str();
        let mut marks = String::new();
        if t.can_fail {
            marks.push_str(" · may fail");
        }
        if t.is_finally() {
            marks.push_str(" · finally");
        }
        let attempt = attempts(t);
        let sep = if attempt.is_empty() { "" } else { " · " };
        let class = format!(
            "task st-{status}{}{}",
            if t.can_fail { " can-fail" } else { "" },
            if t.is_finally() { " finally" } else { "" }
        );
        let _ = write!(
            out,
            "<a href=\"/runs/{run}/tasks/{seg}\" class=\"{class}\" data-task=\"{name}\" data-status=\"{status}\">\
<title>{name}: {status}{sep}{attempt}{marks}</title>\
<rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"6\"/>\
<text x=\"{tx}\" y=\"{ty1}\" class=\"name\">{short}</text>\
<text x=\"{tx}\" y=\"{ty2}\" class=\"sub\">{status}{sep}{attempt}{marks}</text></a>",
            run = esc(view.id.as_str()),
            seg = seg(&t.name),
            name = esc(&t.name),
            short = esc(&cut(&t.name, 24)),
            tx = x + 8,
            ty1 = y + 19,
            ty2 = y + 37,
        );
    }
    out.push_str(
        "</svg></div><figcaption id=\"graph-caption\">Stage graph: stages as columns, \
needs as lines; the task table below says the same in words.</figcaption></figure>",
    );
}

fn task_rows(view: &RunView, now: u64, out: &mut String) {
    for t in &view.tasks {
        let stage = t
            .stage
            .map_or_else(|| "finally".to_string(), |n| n.to_string());
        let started = t.timing.first_launch_ms.map(time_tag).unwrap_or_default();
        let ended = t.timing.finished_ms.map(time_tag).unwrap_or_default();
        let took = t.duration_ms(now).map(duration).unwrap_or_default();
        let mut flags = Vec::new();
        if t.can_fail {
            flags.push("may fail");
        }
        if !t.needs.is_empty() {
            flags.push("has needs");
        }
        let needs = if t.needs.is_empty() {
            String::new()
        } else {
            format!(
                "needs {}",
                t.needs
                    .iter()
                    .map(|n| esc(n).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = write!(
            out,
            "<tr data-task=\"{name}\" data-status=\"{status}\" data-attempt=\"{attempt_n}\">\
<th scope=\"row\"><a href=\"/runs/{run}/tasks/{seg}\">{name}</a></th><td>{stage}</td>\
<td><span class=\"state st-{status}\">{status}</span></td><td>{attempt_n}{of}</td>\
<td>{started}</td><td>{ended}</td><td>{took}</td><td>{flags}{sep}{needs}</td><td>{message}</td>\
<td><button type=\"button\" class=\"show-log\" data-task=\"{name}\">Log</button></td></tr>",
            name = esc(&t.name),
            run = esc(view.id.as_str()),
            seg = seg(&t.name),
            status = t.status.as_str(),
            attempt_n = t.attempt,
            of = if t.retries > 0 {
                format!(" of {}", t.retries + 1)
            } else {
                String::new()
            },
            flags = flags.join(", "),
            sep = if !flags.is_empty() && !needs.is_empty() {
                "; "
            } else {
                ""
            },
            message = esc(t.message.as_deref().unwrap_or("")),
        );
    }
}

/// The live part of a run's page: summary, stage graph and task table.
pub(crate) fn run_live(view: &RunView, now: u64) -> String {
    let mut out = String::with_capacity(1024 + view.tasks.len() * 1200);
    let end = view.finished_ms.unwrap_or(now);
    let _ = write!(
        out,
        "<section class=\"summary\" aria-labelledby=\"run-h\" data-state=\"{state}\" data-version=\"{version}\" \
data-finished=\"{finished}\"><h1 id=\"run-h\">Run {id}</h1><dl>\
<dt>State</dt><dd><span class=\"state st-{state}\" id=\"run-state\">{state}</span></dd>\
<dt>Repository</dt><dd>{repo}</dd><dt>Branch</dt><dd>{branch}</dd>\
<dt>Commit</dt><dd><code>{commit}</code></dd>{author}\
<dt>Submitted</dt><dd>{created}</dd><dt>Duration</dt><dd>{dur}</dd><dt>Version</dt><dd>{version}</dd></dl></section>",
        id = esc(view.id.as_str()),
        state = view.state.as_str(),
        version = view.version,
        finished = view.state.is_finished(),
        repo = esc(&view.repo),
        branch = esc(view.branch.as_deref().unwrap_or("–")),
        commit = esc(&view.commit),
        author = view
            .author
            .as_deref()
            .map(|a| format!("<dt>Author</dt><dd>{}</dd>", esc(a)))
            .unwrap_or_default(),
        created = time_tag(view.created_ms),
        dur = duration(end.saturating_sub(view.created_ms)),
    );
    graph(view, &mut out);
    out.push_str(
        "<div class=\"scroll\"><table id=\"tasks\"><caption>Tasks</caption><thead><tr>\
<th scope=\"col\">Task</th><th scope=\"col\">Stage</th><th scope=\"col\">Status</th>\
<th scope=\"col\">Attempt</th><th scope=\"col\">Started</th><th scope=\"col\">Ended</th>\
<th scope=\"col\">Took</th><th scope=\"col\">Flags</th><th scope=\"col\">Reason</th>\
<th scope=\"col\"><span class=\"sr-only\">Log</span></th></tr></thead><tbody>",
    );
    task_rows(view, now, &mut out);
    out.push_str("</tbody></table></div>");
    out
}

fn run_main(state: &WebState, id: &str, live: &str) -> String {
    let actions = if state.read_only {
        String::new()
    } else {
        "<div class=\"actions\"><button type=\"button\" id=\"cancel\">Cancel run</button> \
<button type=\"button\" id=\"rerun\">Rerun</button></div>"
            .to_string()
    };
    format!(
        "<div id=\"live\" data-run=\"{id}\">{live}</div>{actions}\
<section id=\"log-pane\" aria-labelledby=\"log-h\"><h2 id=\"log-h\">Log <span id=\"log-task\"></span></h2>\
<p id=\"log-state\" role=\"status\"></p><pre id=\"log-text\" tabindex=\"0\"></pre></section>",
        id = esc(id),
    )
}

/// A run's page for `view` (what `GET /runs/{id}` answers without a
/// token; public for benchmarks).
pub fn render_run_page(state: &WebState, view: &RunView) -> String {
    let live = run_live(view, now_ms());
    let attrs = format!("data-page=\"run\" data-run=\"{}\"", esc(view.id.as_str()));
    layout(
        state,
        &format!("run {}", view.id),
        &attrs,
        &run_main(state, view.id.as_str(), &live),
    )
}

async fn run_or_task(state: WebState, id: String, task: Option<String>) -> Response {
    let rid = match api::run_id(&id) {
        Ok(r) => r,
        Err(problem) => {
            let (status, detail) = detail_of(problem);
            return error_page(&state, status, &detail);
        }
    };
    let live = if state.auth.is_some() {
        "<p>Loading…</p>".to_string()
    } else {
        match state.control.view(&rid).await {
            Ok(view) => {
                if let Some(t) = &task
                    && view.task(t).is_none()
                {
                    return error_page(
                        &state,
                        StatusCode::NOT_FOUND,
                        &format!("run {rid} has no task {:?}", cut(t, 80)),
                    );
                }
                run_live(&view, now_ms())
            }
            Err(e) => {
                let (status, detail) = detail_of(api::error_problem(&e, Some("id")));
                return error_page(&state, status, &detail);
            }
        }
    };
    let mut attrs = format!("data-page=\"run\" data-run=\"{}\"", esc(rid.as_str()));
    let title = match &task {
        Some(t) => {
            let _ = write!(attrs, " data-task=\"{}\"", esc(t));
            format!("{t} · run {rid}")
        }
        None => format!("run {rid}"),
    };
    html(
        StatusCode::OK,
        layout(
            &state,
            &title,
            &attrs,
            &run_main(&state, rid.as_str(), &live),
        ),
    )
}

/// `GET /runs/{id}`.
pub(crate) async fn run_page(State(state): State<WebState>, Path(id): Path<String>) -> Response {
    run_or_task(state, id, None).await
}

/// `GET /runs/{id}/tasks/{task}`: the run's page, its log pane on `task`.
pub(crate) async fn task_page(
    State(state): State<WebState>,
    Path((id, task)): Path<(String, String)>,
) -> Response {
    if task.len() > 256 {
        return error_page(
            &state,
            StatusCode::BAD_REQUEST,
            "task: longer than 256 bytes",
        );
    }
    run_or_task(state, id, Some(task)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_767_225_600_000), "2026-01-01 00:00:00");
        assert_eq!(duration(61_000), "1m 1s");
        assert_eq!(duration(250), "250ms");
    }
}

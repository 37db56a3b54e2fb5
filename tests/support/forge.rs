//! A forge API emulator over loopback HTTP (GitHub, GitLab and Gitea
//! flavours at once): serves pipeline files per commit, pull request files
//! and compares, takes commit statuses, and records every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// One request the emulator received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The path, as sent (still percent-encoded).
    pub path: String,
    /// The query string.
    pub query: String,
    /// The `authorization` or `private-token` header.
    pub auth: Option<String>,
    /// The method.
    pub method: String,
    /// The body, when it is JSON.
    pub body: Option<serde_json::Value>,
    /// The status answered.
    pub answered: u16,
}

#[derive(Default)]
struct State {
    /// (commit, path) -> text.
    files: HashMap<(String, String), String>,
    /// pull request number -> changed files.
    pr_files: HashMap<u64, Vec<String>>,
    /// head commit of a compare -> changed files.
    compares: HashMap<String, Vec<String>>,
    calls: Vec<Call>,
    /// Answer every call 503 (the forge is down).
    down: bool,
    /// Answer the next calls 429 with `Retry-After: 1`.
    rate_limited: u32,
    /// Answer commit status calls 503 (the forge's status API is down).
    statuses_down: bool,
    /// Answer the next commit status calls 429 with `Retry-After: 1`.
    statuses_rate_limited: u32,
    /// GitHub/Gitea collaborator permission per login (absent: `read`).
    permissions: HashMap<String, String>,
    /// GitLab member access level per user id (absent: not a member).
    access_levels: HashMap<u64, u32>,
    /// Check runs created so far.
    check_runs: u64,
    /// Pull requests served by `GET .../pulls/{n}` (GitHub/Gitea shape).
    pulls: HashMap<u64, serde_json::Value>,
}

/// The installation token the emulator hands out.
pub const INSTALLATION_TOKEN: &str = "ghs_installation-token";

/// The running emulator.
#[derive(Clone)]
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Emulator {
    /// Starts on a free loopback port.
    pub async fn start() -> Emulator {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let s = Arc::clone(&state);
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = Arc::clone(&s);
                async move { handle(&s, &method, &uri, &headers, &body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Emulator { url, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `text` as `path` at `commit`.
    pub fn put_file(&self, commit: &str, path: &str, text: &str) {
        self.lock()
            .files
            .insert((commit.to_string(), path.to_string()), text.to_string());
    }

    /// The files pull request `pr` changes.
    pub fn put_pr_files(&self, pr: u64, files: &[&str]) {
        self.lock()
            .pr_files
            .insert(pr, files.iter().map(|f| f.to_string()).collect());
    }

    /// Takes the forge down (every call answers 503) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `n` calls answer 429 with `Retry-After: 1`.
    pub fn rate_limit_next(&self, n: u32) {
        self.lock().rate_limited = n;
    }

    /// The files a compare up to `head` lists.
    pub fn put_compare(&self, head: &str, files: &[&str]) {
        self.lock().compares.insert(
            head.to_string(),
            files.iter().map(|f| f.to_string()).collect(),
        );
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// `login`'s permission on GitHub/Gitea repositories (`admin`, `write`,
    /// `read`, ...).
    pub fn set_permission(&self, login: &str, permission: &str) {
        self.lock()
            .permissions
            .insert(login.to_string(), permission.to_string());
    }

    /// GitLab user `id`'s access level on projects.
    pub fn set_access_level(&self, id: u64, level: u32) {
        self.lock().access_levels.insert(id, level);
    }

    /// Serves `pull` (GitHub's shape) at `GET /repos/{owner}/{repo}/pulls/{n}`.
    pub fn put_pull(&self, n: u64, pull: serde_json::Value) {
        self.lock().pulls.insert(n, pull);
    }

    /// The check run calls so far (creations and updates), in order.
    pub fn check_run_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.contains("/check-runs"))
            .collect()
    }

    /// The comments posted (path and text), in order.
    pub fn comments(&self) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter(|c| {
                c.method == "POST" && (c.path.ends_with("/comments") || c.path.ends_with("/notes"))
            })
            .map(|c| {
                let body = c
                    .body
                    .as_ref()
                    .and_then(|b| b["body"].as_str())
                    .unwrap_or_default()
                    .to_string();
                (c.path, body)
            })
            .collect()
    }

    /// Commit status calls answer 503 (`true`) or are taken again.
    pub fn set_statuses_down(&self, down: bool) {
        self.lock().statuses_down = down;
    }

    /// The next `n` commit status calls answer 429 with `Retry-After: 1`.
    pub fn rate_limit_statuses(&self, n: u32) {
        self.lock().statuses_rate_limited = n;
    }

    /// The commit status calls so far for `commit` (every answer).
    pub fn status_calls(&self, commit: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path.ends_with(&format!("/statuses/{commit}")))
            .collect()
    }

    /// The commit statuses taken for `commit`, in order: (context, state,
    /// description) of each accepted call.
    pub fn statuses(&self, commit: &str) -> Vec<(String, String, String)> {
        self.status_calls(commit)
            .into_iter()
            .filter(|c| c.answered == 201)
            .filter_map(|c| c.body)
            .map(|b| {
                let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
                let context = if b.get("name").is_some() {
                    s("name")
                } else {
                    s("context")
                };
                (context, s("state"), s("description"))
            })
            .collect()
    }

    /// The states taken for `commit` in `context`, in order.
    pub fn states(&self, commit: &str, context: &str) -> Vec<String> {
        self.statuses(commit)
            .into_iter()
            .filter(|(c, _, _)| c == context)
            .map(|(_, s, _)| s)
            .collect()
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .map(decode)
}

fn handle(
    state: &Mutex<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let auth = headers
        .get("authorization")
        .or_else(|| headers.get("private-token"))
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    let response = answer(&mut st, method, &path, &query, body);
    st.calls.push(Call {
        path,
        query,
        auth,
        method: method.to_string(),
        body: serde_json::from_slice(body).ok(),
        answered: response.status().as_u16(),
    });
    response
}

/// The commit status states each forge documents.
fn valid_state(path: &str, state: &str) -> bool {
    if path.starts_with("/api/v4/") {
        [
            "pending", "running", "success", "failed", "canceled", "skipped",
        ]
        .contains(&state)
    } else if path.starts_with("/api/v1/") {
        ["pending", "success", "error", "failure", "warning"].contains(&state)
    } else {
        ["error", "failure", "pending", "success"].contains(&state)
    }
}

fn answer(st: &mut State, method: &Method, path: &str, query: &str, body: &[u8]) -> Response {
    if method == Method::POST && path.contains("/statuses/") {
        if st.statuses_down || st.down {
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        if st.statuses_rate_limited > 0 {
            st.statuses_rate_limited -= 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                r#"{"message":"API rate limit exceeded"}"#,
            )
                .into_response();
        }
        let Ok(b) = serde_json::from_slice::<serde_json::Value>(body) else {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"message":"Problems parsing JSON"}"#,
            )
                .into_response();
        };
        // The documented required fields: state, and GitLab's name or
        // the context elsewhere; no unknown keys.
        let gitlab = path.starts_with("/api/v4/");
        let allowed: &[&str] = if gitlab {
            &[
                "state",
                "name",
                "description",
                "target_url",
                "ref",
                "pipeline_id",
                "coverage",
            ]
        } else {
            &["state", "context", "description", "target_url"]
        };
        let ok = b.as_object().is_some_and(|o| {
            o.keys().all(|k| allowed.contains(&k.as_str()))
                && o.get("state")
                    .and_then(|v| v.as_str())
                    .is_some_and(|s| valid_state(path, s))
        });
        if !ok {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"message":"Validation Failed"}"#,
            )
                .into_response();
        }
        return (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            serde_json::json!({"id": st.calls.len() + 1, "state": b["state"]}).to_string(),
        )
            .into_response();
    }
    let path = path.to_string();
    let query = query.to_string();
    if st.down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    if st.rate_limited > 0 {
        st.rate_limited -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            r#"{"message":"API rate limit exceeded"}"#,
        )
            .into_response();
    }
    // GitLab under /api/v4, Gitea under /api/v1, GitHub at the root.
    let rest = path
        .strip_prefix("/api/v4")
        .or_else(|| path.strip_prefix("/api/v1"))
        .unwrap_or(&path);
    let seg: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let page = query_param(&query, "page").unwrap_or_else(|| "1".into());
    let json = |v: serde_json::Value| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    match seg.as_slice() {
        ["repos", _, _, "pulls", n] if *method == Method::GET => {
            match st.pulls.get(&n.parse().unwrap_or(0)) {
                Some(p) => json(p.clone()),
                None => (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response(),
            }
        }
        ["repos", _, _, "installation"] => json(serde_json::json!({"id": 77, "app_id": 4242})),
        ["app", "installations", "77", "access_tokens"] if *method == Method::POST => {
            let expires = humantime::format_rfc3339_seconds(
                std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
            );
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                serde_json::json!({"token": INSTALLATION_TOKEN, "expires_at": expires.to_string()})
                    .to_string(),
            )
                .into_response()
        }
        ["repos", _, _, "check-runs", rest @ ..] => {
            let Ok(b) = serde_json::from_slice::<serde_json::Value>(body) else {
                return (StatusCode::BAD_REQUEST, r#"{"message":"Problems parsing JSON"}"#)
                    .into_response();
            };
            // GitHub's documented fields; a completed check run has a conclusion.
            let allowed = [
                "name", "head_sha", "details_url", "external_id", "status", "started_at",
                "conclusion", "completed_at", "output", "actions",
            ];
            let obj = b.as_object().cloned().unwrap_or_default();
            let status_ok = obj.get("status").and_then(|v| v.as_str()).is_none_or(|s| {
                ["queued", "in_progress", "completed"].contains(&s)
            });
            let conclusion_ok = obj.get("conclusion").and_then(|v| v.as_str()).is_none_or(|c| {
                ["action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out"].contains(&c)
            });
            let completed = obj.get("status").and_then(|v| v.as_str()) == Some("completed");
            let valid = obj.keys().all(|k| allowed.contains(&k.as_str()))
                && status_ok
                && conclusion_ok
                && (!completed || obj.contains_key("conclusion"))
                && obj.get("output").is_none_or(|o| {
                    o["title"].is_string()
                        && o["summary"].as_str().is_some_and(|s| s.chars().count() <= 65_535)
                });
            match (method.as_str(), rest) {
                ("POST", []) if valid && obj.contains_key("name") && obj.contains_key("head_sha") => {
                    st.check_runs += 1;
                    (
                        StatusCode::CREATED,
                        [("content-type", "application/json")],
                        serde_json::json!({"id": 1000 + st.check_runs}).to_string(),
                    )
                        .into_response()
                }
                ("PATCH", [id]) if valid && id.parse::<u64>().is_ok_and(|n| n > 1000 && n <= 1000 + st.check_runs) => {
                    json(serde_json::json!({"id": id.parse::<u64>().unwrap_or(0)}))
                }
                _ => (StatusCode::UNPROCESSABLE_ENTITY, r#"{"message":"Validation Failed"}"#)
                    .into_response(),
            }
        }
        ["repos", _, _, "collaborators", user, "permission"] => {
            let permission = st
                .permissions
                .get(&decode(user))
                .cloned()
                .unwrap_or_else(|| "read".to_string());
            json(serde_json::json!({"permission": permission, "user": {"login": decode(user)}}))
        }
        ["projects", _, "members", "all", uid] => {
            match st.access_levels.get(&uid.parse().unwrap_or(0)) {
                Some(level) => json(serde_json::json!({"id": uid.parse::<u64>().unwrap_or(0), "access_level": level})),
                None => (StatusCode::NOT_FOUND, r#"{"message":"404 Not found"}"#).into_response(),
            }
        }
        ["repos", _, _, "issues", _, "comments"] | ["projects", _, "merge_requests", _, "notes"]
            if *method == Method::POST =>
        {
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                serde_json::json!({"id": 1, "body": serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|b| b["body"].as_str().map(String::from))}).to_string(),
            )
                .into_response()
        }
        ["repos", _, _, "contents", file @ ..] => {
            let file = decode(&file.join("/"));
            let sha = query_param(&query, "ref").unwrap_or_default();
            match st.files.get(&(sha, file.clone())) {
                Some(text) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
                    // GitHub wraps the base64 at 60 characters.
                    let wrapped: Vec<String> = b64
                        .as_bytes()
                        .chunks(60)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    json(serde_json::json!({
                        "type": "file", "encoding": "base64", "name": file, "path": file,
                        "content": wrapped.join("\n") + "\n"
                    }))
                }
                None => (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response(),
            }
        }
        ["projects", _, "repository", "files", file, "raw"] => {
            let file = decode(file);
            let sha = query_param(&query, "ref").unwrap_or_default();
            match st.files.get(&(sha, file)) {
                Some(text) => (StatusCode::OK, text.clone()).into_response(),
                None => {
                    (StatusCode::NOT_FOUND, r#"{"message":"404 File Not Found"}"#).into_response()
                }
            }
        }
        ["repos", _, _, "pulls", n, "files"] => {
            let files = if page == "1" {
                st.pr_files
                    .get(&n.parse().unwrap_or(0))
                    .cloned()
                    .unwrap_or_default()
            } else {
                vec![]
            };
            json(serde_json::json!(
                files
                    .iter()
                    .map(|f| serde_json::json!({"filename": f, "status": "modified"}))
                    .collect::<Vec<_>>()
            ))
        }
        ["projects", _, "merge_requests", n, "diffs"] => {
            let files = if page == "1" {
                st.pr_files
                    .get(&n.parse().unwrap_or(0))
                    .cloned()
                    .unwrap_or_default()
            } else {
                vec![]
            };
            json(serde_json::json!(
                files
                    .iter()
                    .map(|f| serde_json::json!({"new_path": f, "old_path": f}))
                    .collect::<Vec<_>>()
            ))
        }
        ["repos", _, _, "compare", range] => {
            let range = decode(range);
            let head = range.split("...").nth(1).unwrap_or_default();
            match st.compares.get(head) {
                Some(files) => json(serde_json::json!({
                    "status": "ahead",
                    "files": files.iter().map(|f| serde_json::json!({"filename": f})).collect::<Vec<_>>()
                })),
                None => (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response(),
            }
        }
        ["projects", _, "repository", "compare"] => {
            let head = query_param(&query, "to").unwrap_or_default();
            match st.compares.get(&head) {
                Some(files) => json(serde_json::json!({
                    "commits": [],
                    "diffs": files.iter().map(|f| serde_json::json!({"new_path": f, "old_path": f})).collect::<Vec<_>>()
                })),
                None => (StatusCode::NOT_FOUND, r#"{"message":"404 Not found"}"#).into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#).into_response(),
    }
}

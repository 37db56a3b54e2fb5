//! A forge API emulator over loopback HTTP (GitHub, GitLab and Gitea
//! flavours at once): serves pipeline files per commit, pull request files
//! and compares, and records every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
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
}

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
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let s = Arc::clone(&s);
            async move { handle(&s, &uri, &headers) }
        });
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

fn handle(state: &Mutex<State>, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let auth = headers
        .get("authorization")
        .or_else(|| headers.get("private-token"))
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    st.calls.push(Call {
        path: path.clone(),
        query: query.clone(),
        auth,
    });
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

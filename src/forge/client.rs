//! The forge API client: the pipeline file at a commit and the changed
//! files of a pull request or push — one small function per provider over
//! reqwest (rustls), with timeouts and retries on 5xx/429 honouring
//! `Retry-After` and the forges' rate limit headers.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tracing::debug;

use std::sync::Arc;

use super::Provider;
use super::app::{GithubApp, Installation, InstallationToken, repository_of};
use super::config::RepoConfig;
use super::event::{CommentCommand, ForgeEvent};

/// Why the forge did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The forge answered 404: the file (or pull request) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The forge refused the request (401/403 not caused by a rate limit,
    /// 4xx): retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The forge could not be reached or kept failing (5xx, 429, timeouts)
    /// after every retry: try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Timeouts and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Per request (default 10 s).
    pub timeout: Duration,
    /// Attempts per call (default 4).
    pub attempts: u32,
    /// First backoff, doubled after each attempt (default 500 ms).
    pub backoff: Duration,
    /// The longest wait a `Retry-After` or rate limit reset may impose
    /// within one call (default 60 s); longer ones give up with
    /// [`ClientError::Unavailable`] and the intake tries again later.
    pub max_wait: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// One HTTP client for every forge.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    http: reqwest::Client,
    config: ClientConfig,
    app: Option<Arc<GithubApp>>,
}

/// How a request authenticates.
enum Auth {
    None,
    /// The repository's token, sent as each forge expects.
    Token(String),
    /// `Authorization: Bearer` (a GitHub App JWT or installation token).
    Bearer(String),
}

/// Characters percent-encoded in a path segment (everything but unreserved).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A repository path (`dir/file.yaml`), each segment encoded, slashes kept.
fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

impl ForgeClient {
    /// A client with `config`.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the TLS setup cannot be built.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("stagetime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(ForgeClient {
            http,
            config,
            app: None,
        })
    }

    /// Authenticates GitHub repositories without a token of their own as
    /// the GitHub App `app` (installation access tokens).
    pub fn with_app(mut self, app: Arc<GithubApp>) -> Self {
        self.app = Some(app);
        self
    }

    /// True when calls for `repo` go as the GitHub App (a GitHub
    /// repository without a `token_*` of its own, and an App configured):
    /// then runs are reported as check runs.
    pub fn uses_app(&self, repo: &RepoConfig) -> bool {
        self.app.is_some() && repo.provider == Provider::Github && repo.token.is_none()
    }

    fn request(
        &self,
        provider: Provider,
        auth: &Auth,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> RequestBuilder {
        let mut req = self.http.request(method.clone(), url);
        if let Some(body) = body {
            req = req.json(body);
        }
        if provider == Provider::Github {
            req = req
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28");
        }
        match auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Token(token) => match provider {
                Provider::Github => req.bearer_auth(token),
                Provider::Gitlab => req.header("private-token", token),
                Provider::Gitea => req.header("authorization", format!("token {token}")),
            },
        }
    }

    async fn auth(&self, repo: &RepoConfig) -> Result<Auth, ClientError> {
        if let Some(token) = &repo.token {
            return Ok(Auth::Token(
                String::from_utf8_lossy(token.expose()).into_owned(),
            ));
        }
        match &self.app {
            Some(app) if repo.provider == Provider::Github => {
                self.installation_token(app, repo).await.map(Auth::Bearer)
            }
            _ => Ok(Auth::None),
        }
    }

    /// The installation access token of the App for `repo`: cached, else
    /// `GET /repos/{owner}/{repo}/installation` and `POST
    /// /app/installations/{id}/access_tokens`, both with the App JWT.
    async fn installation_token(
        &self,
        app: &GithubApp,
        repo: &RepoConfig,
    ) -> Result<String, ClientError> {
        let repository = repository_of(&repo.url).ok_or_else(|| {
            ClientError::Refused(format!("{} names no owner/repository", repo.url))
        })?;
        if let Some(token) = app.cached(&repo.api_url, &repository).await {
            return Ok(token);
        }
        let jwt = Auth::Bearer(app.jwt()?);
        let url = format!(
            "{}/repos/{}/installation",
            repo.api_url,
            encode_path(&repository)
        );
        let installation: Installation = json(
            self.send_raw(Provider::Github, &jwt, &Method::GET, &url, None)
                .await?,
        )
        .await?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            repo.api_url, installation.id
        );
        let token: InstallationToken = json(
            self.send_raw(Provider::Github, &jwt, &Method::POST, &url, None)
                .await?,
        )
        .await?;
        app.keep(
            &repo.api_url,
            &repository,
            token.token.clone(),
            &token.expires_at,
        )
        .await;
        Ok(token.token)
    }

    /// GET with retries; answers the successful response.
    async fn send(&self, repo: &RepoConfig, url: &str) -> Result<Response, ClientError> {
        self.send_with(repo, &Method::GET, url, None).await
    }

    /// POSTs `body` as JSON to `{api_url}{path}` with the repository's
    /// token, retrying on 5xx/429 as every call does; answers the response
    /// body as JSON (`null` when it is not JSON).
    ///
    /// # Errors
    /// [`ClientError::NotFound`], [`ClientError::Refused`] (4xx: a token
    /// without the permission, a body the forge does not take) or
    /// [`ClientError::Unavailable`].
    pub async fn post_json(
        &self,
        repo: &RepoConfig,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", repo.api_url);
        let resp = self
            .send_with(repo, &Method::POST, &url, Some(body))
            .await?;
        let bytes = read_bounded(resp, MAX_API_RESPONSE_BYTES).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// PATCHes `body` as JSON to `{api_url}{path}`, as
    /// [`ForgeClient::post_json`] POSTs.
    ///
    /// # Errors
    /// As [`ForgeClient::post_json`].
    pub async fn patch_json(
        &self,
        repo: &RepoConfig,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", repo.api_url);
        let resp = self
            .send_with(repo, &Method::PATCH, &url, Some(body))
            .await?;
        let bytes = read_bounded(resp, MAX_API_RESPONSE_BYTES).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// A request for `repo` with retries; answers the successful response.
    async fn send_with(
        &self,
        repo: &RepoConfig,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let auth = self.auth(repo).await?;
        self.send_raw(repo.provider, &auth, method, url, body).await
    }

    /// A request with retries on 5xx/429 (waiting as `Retry-After` or the
    /// rate limit reset says); answers the successful response.
    async fn send_raw(
        &self,
        provider: Provider,
        auth: &Auth,
        method: &Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let mut backoff = self.config.backoff;
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            let wait = match self.request(provider, auth, method, url, body).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(resp);
                    }
                    let limited = status == StatusCode::TOO_MANY_REQUESTS
                        || (status == StatusCode::FORBIDDEN && rate_limited(&resp));
                    last = format!("{method} {} answered {status}", strip_query(url));
                    if status == StatusCode::NOT_FOUND {
                        return Err(ClientError::NotFound(last));
                    }
                    if !(limited || status.is_server_error()) {
                        return Err(ClientError::Refused(last));
                    }
                    retry_after(&resp).unwrap_or(backoff)
                }
                Err(e) => {
                    last = format!("{method} {}: {e}", strip_query(url));
                    backoff
                }
            };
            if attempt == self.config.attempts.max(1) {
                break;
            }
            if wait > self.config.max_wait {
                return Err(ClientError::Unavailable(format!(
                    "{last}; asked to wait {}s",
                    wait.as_secs()
                )));
            }
            debug!(
                attempt,
                wait_ms = wait.as_millis() as u64,
                "{last}; retrying"
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.config.max_wait);
        }
        Err(ClientError::Unavailable(last))
    }

    /// The pipeline file's text at the event's commit; `Ok(None)` when the
    /// repository has no such file there.
    ///
    /// GitHub and Gitea: `GET {api}/repos/{owner}/{repo}/contents/{path}?ref={sha}`
    /// (JSON, base64 content); GitLab: `GET
    /// {api}/projects/{id}/repository/files/{path}/raw?ref={sha}`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] (bad token, no access, not a file, not UTF-8)
    /// or [`ClientError::Unavailable`].
    pub async fn pipeline_file(
        &self,
        repo: &RepoConfig,
        event: &ForgeEvent,
    ) -> Result<Option<String>, ClientError> {
        let sha = encode_segment(&event.commit);
        let url = match repo.provider {
            Provider::Github | Provider::Gitea => format!(
                "{}/repos/{}/contents/{}?ref={sha}",
                repo.api_url,
                encode_path(&event.repository),
                encode_path(&repo.pipeline)
            ),
            Provider::Gitlab => format!(
                "{}/projects/{}/repository/files/{}/raw?ref={sha}",
                repo.api_url,
                gitlab_project(event),
                encode_segment(&repo.pipeline)
            ),
        };
        let resp = match self.send(repo, &url).await {
            Ok(r) => r,
            Err(ClientError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Base64 in a JSON envelope: a little over 4/3 of the file itself.
        let body = read_bounded(resp, 2 * super::trigger::MAX_PIPELINE_FILE_BYTES).await?;
        let bytes = match repo.provider {
            Provider::Gitlab => body,
            Provider::Github | Provider::Gitea => {
                #[derive(Deserialize)]
                struct Contents {
                    #[serde(rename = "type", default)]
                    kind: Option<String>,
                    #[serde(default)]
                    encoding: Option<String>,
                    #[serde(default)]
                    content: Option<String>,
                }
                let c: Contents = serde_json::from_slice(&body).map_err(|_| {
                    ClientError::Refused(format!("{} is not a file (a directory?)", repo.pipeline))
                })?;
                if c.kind.as_deref().is_some_and(|k| k != "file") {
                    return Err(ClientError::Refused(format!(
                        "{} is not a file",
                        repo.pipeline
                    )));
                }
                if c.encoding.as_deref().is_some_and(|e| e != "base64") {
                    return Err(ClientError::Refused(format!(
                        "{} came in encoding {:?}; files over 1 MB are not served by the contents API",
                        repo.pipeline,
                        c.encoding.unwrap_or_default()
                    )));
                }
                let text: String = c.content.unwrap_or_default().split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| {
                        ClientError::Refused(format!("{}: bad base64: {e}", repo.pipeline))
                    })?
            }
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ClientError::Refused(format!("{} is not UTF-8 text", repo.pipeline)))
    }

    /// The files a pull request changes (GitHub/Gitea `pulls/{n}/files`,
    /// GitLab `merge_requests/{iid}/diffs`), or a push changed (GitHub/Gitea
    /// `compare/{before}...{after}`, GitLab `repository/compare`). `Ok(None)`
    /// when the forge cannot tell (a push creating a branch has no `before`).
    ///
    /// # Errors
    /// As [`ForgeClient::pipeline_file`], and [`ClientError::NotFound`].
    pub async fn changed_files(
        &self,
        repo: &RepoConfig,
        event: &ForgeEvent,
    ) -> Result<Option<Vec<String>>, ClientError> {
        #[derive(Deserialize)]
        struct HubFile {
            filename: String,
        }
        #[derive(Deserialize)]
        struct LabDiff {
            new_path: String,
            old_path: String,
        }
        let api = &repo.api_url;
        let owner_repo = encode_path(&event.repository);
        const PER_PAGE: usize = 100;
        const MAX_PAGES: usize = 30;
        let mut files = Vec::new();
        if let Some(pr) = event.pr {
            for page in 1..=MAX_PAGES {
                let (url, gitlab) = match repo.provider {
                    Provider::Github | Provider::Gitea => (
                        format!(
                            "{api}/repos/{owner_repo}/pulls/{pr}/files?per_page={PER_PAGE}&limit={PER_PAGE}&page={page}"
                        ),
                        false,
                    ),
                    Provider::Gitlab => (
                        format!(
                            "{api}/projects/{}/merge_requests/{pr}/diffs?per_page={PER_PAGE}&page={page}",
                            gitlab_project(event)
                        ),
                        true,
                    ),
                };
                let resp = self.send(repo, &url).await?;
                let n = if gitlab {
                    let list: Vec<LabDiff> = json(resp).await?;
                    let n = list.len();
                    files.extend(list.into_iter().flat_map(|d| [d.new_path, d.old_path]));
                    n
                } else {
                    let list: Vec<HubFile> = json(resp).await?;
                    let n = list.len();
                    files.extend(list.into_iter().map(|f| f.filename));
                    n
                };
                if n < PER_PAGE {
                    break;
                }
            }
        } else {
            let Some(before) = &event.before else {
                return Ok(None);
            };
            match repo.provider {
                Provider::Github | Provider::Gitea => {
                    #[derive(Deserialize)]
                    struct Compare {
                        #[serde(default)]
                        files: Option<Vec<HubFile>>,
                    }
                    let url = format!(
                        "{api}/repos/{owner_repo}/compare/{}...{}",
                        encode_segment(before),
                        encode_segment(&event.commit)
                    );
                    let c: Compare = json(self.send(repo, &url).await?).await?;
                    match c.files {
                        Some(list) => files.extend(list.into_iter().map(|f| f.filename)),
                        None => return Ok(None),
                    }
                }
                Provider::Gitlab => {
                    #[derive(Deserialize)]
                    struct Compare {
                        diffs: Vec<LabDiff>,
                    }
                    let url = format!(
                        "{api}/projects/{}/repository/compare?from={}&to={}",
                        gitlab_project(event),
                        encode_segment(before),
                        encode_segment(&event.commit)
                    );
                    let c: Compare = json(self.send(repo, &url).await?).await?;
                    files.extend(c.diffs.into_iter().flat_map(|d| [d.new_path, d.old_path]));
                }
            }
        }
        files.sort();
        files.dedup();
        Ok(Some(files))
    }
}

/// Who may command runs from comments: write access or more.
impl ForgeClient {
    /// Whether the commenter of `cmd` has write access to the repository:
    /// GitHub and Gitea `GET /repos/{owner}/{repo}/collaborators/{user}/permission`
    /// (`admin`, `maintain`, `write`, Gitea's `owner`); GitLab `GET
    /// /projects/{id}/members/all/{user_id}` with `access_level` ≥ 30
    /// (Developer). Not a collaborator or member (404): false.
    ///
    /// # Errors
    /// [`ClientError::Refused`] or [`ClientError::Unavailable`].
    pub async fn may_command(
        &self,
        repo: &RepoConfig,
        cmd: &CommentCommand,
    ) -> Result<bool, ClientError> {
        let api = &repo.api_url;
        let result = match repo.provider {
            Provider::Github | Provider::Gitea => {
                #[derive(Deserialize)]
                struct Permission {
                    permission: String,
                }
                let url = format!(
                    "{api}/repos/{}/collaborators/{}/permission",
                    encode_path(&cmd.repository),
                    encode_segment(&cmd.commenter)
                );
                match self.send(repo, &url).await {
                    Ok(resp) => json::<Permission>(resp).await.map(|p| {
                        matches!(
                            p.permission.as_str(),
                            "admin" | "maintain" | "write" | "owner"
                        )
                    }),
                    Err(e) => Err(e),
                }
            }
            Provider::Gitlab => {
                #[derive(Deserialize)]
                struct Member {
                    access_level: u32,
                }
                let Some(user) = cmd.commenter_id else {
                    return Ok(false);
                };
                let url = format!(
                    "{api}/projects/{}/members/all/{user}",
                    cmd.project_id
                        .map_or_else(|| encode_segment(&cmd.repository), |id| id.to_string())
                );
                match self.send(repo, &url).await {
                    Ok(resp) => json::<Member>(resp).await.map(|m| m.access_level >= 30),
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Err(ClientError::NotFound(_)) => Ok(false),
            other => other,
        }
    }

    /// The open pull request of `cmd` as the event of its head commit
    /// (GitHub and Gitea `GET /repos/{owner}/{repo}/pulls/{number}`, GitLab
    /// `GET /projects/{id}/merge_requests/{iid}`); `Ok(None)` when it is
    /// not open.
    ///
    /// # Errors
    /// As [`ForgeClient::pipeline_file`], and [`ClientError::NotFound`].
    pub async fn pull_request(
        &self,
        repo: &RepoConfig,
        cmd: &CommentCommand,
    ) -> Result<Option<ForgeEvent>, ClientError> {
        #[derive(Deserialize)]
        struct HubRepo {
            full_name: String,
        }
        #[derive(Deserialize)]
        struct HubBranch {
            #[serde(rename = "ref")]
            git_ref: String,
            sha: String,
            #[serde(default)]
            repo: Option<HubRepo>,
        }
        #[derive(Deserialize)]
        struct User {
            #[serde(default)]
            login: Option<String>,
            #[serde(default)]
            username: Option<String>,
        }
        #[derive(Deserialize)]
        struct HubPull {
            state: String,
            head: HubBranch,
            base: HubBranch,
            #[serde(default)]
            user: Option<User>,
            #[serde(default)]
            updated_at: Option<String>,
        }
        #[derive(Deserialize)]
        struct LabMerge {
            state: String,
            sha: String,
            source_branch: String,
            target_branch: String,
            source_project_id: u64,
            target_project_id: u64,
            #[serde(default)]
            author: Option<User>,
            #[serde(default)]
            updated_at: Option<String>,
        }
        let api = &repo.api_url;
        let mut event = ForgeEvent {
            provider: repo.provider,
            delivery: cmd.delivery.clone(),
            kind: super::event::EventKind::PullRequest,
            repository: cmd.repository.clone(),
            project_id: cmd.project_id,
            git_ref: String::new(),
            branch: None,
            tag: None,
            commit: String::new(),
            before: None,
            pr: Some(cmd.pr),
            target_branch: None,
            sender: cmd.commenter.clone(),
            author: None,
            pushed_at: None,
            changed_files: None,
            fork: false,
            action: Some("ok-to-test".to_string()),
        };
        let name = |u: Option<User>| u.and_then(|u| u.login.or(u.username));
        match repo.provider {
            Provider::Github | Provider::Gitea => {
                let url = format!(
                    "{api}/repos/{}/pulls/{}",
                    encode_path(&cmd.repository),
                    cmd.pr
                );
                let p: HubPull = json(self.send(repo, &url).await?).await?;
                if p.state != "open" {
                    return Ok(None);
                }
                event.fork = p
                    .head
                    .repo
                    .as_ref()
                    .is_none_or(|r| !r.full_name.eq_ignore_ascii_case(&cmd.repository));
                event.git_ref = format!("refs/heads/{}", p.head.git_ref);
                event.branch = Some(p.head.git_ref);
                event.commit = p.head.sha;
                event.target_branch = Some(p.base.git_ref);
                event.author = name(p.user);
                event.pushed_at = p.updated_at;
            }
            Provider::Gitlab => {
                let url = format!(
                    "{api}/projects/{}/merge_requests/{}",
                    cmd.project_id
                        .map_or_else(|| encode_segment(&cmd.repository), |id| id.to_string()),
                    cmd.pr
                );
                let m: LabMerge = json(self.send(repo, &url).await?).await?;
                if m.state != "opened" {
                    return Ok(None);
                }
                event.fork = m.source_project_id != m.target_project_id;
                event.git_ref = format!("refs/heads/{}", m.source_branch);
                event.branch = Some(m.source_branch);
                event.commit = m.sha;
                event.target_branch = Some(m.target_branch);
                event.author = name(m.author);
                event.pushed_at = m.updated_at;
            }
        }
        Ok(Some(event))
    }

    /// Adds a comment to the pull request of `cmd`: GitHub and Gitea `POST
    /// /repos/{owner}/{repo}/issues/{number}/comments`, GitLab `POST
    /// /projects/{id}/merge_requests/{iid}/notes`, body `{"body": text}`.
    ///
    /// # Errors
    /// As [`ForgeClient::post_json`].
    pub async fn comment(
        &self,
        repo: &RepoConfig,
        cmd: &CommentCommand,
        text: &str,
    ) -> Result<(), ClientError> {
        let path = match repo.provider {
            Provider::Github | Provider::Gitea => format!(
                "/repos/{}/issues/{}/comments",
                encode_path(&cmd.repository),
                cmd.pr
            ),
            Provider::Gitlab => format!(
                "/projects/{}/merge_requests/{}/notes",
                cmd.project_id
                    .map_or_else(|| encode_segment(&cmd.repository), |id| id.to_string()),
                cmd.pr
            ),
        };
        self.post_json(repo, &path, &serde_json::json!({ "body": text }))
            .await
            .map(|_| ())
    }
}

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let url = strip_query(resp.url().as_str()).to_string();
    let bytes = read_bounded(resp, MAX_API_RESPONSE_BYTES).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Refused(format!("{url} answered an unexpected shape: {e}")))
}

/// The largest answer of a forge API call read (a page of changed files or
/// commits): GitHub's own webhook cap.
const MAX_API_RESPONSE_BYTES: usize = 25 << 20;

/// Reads a response body of at most `max` bytes: a forge (or whoever
/// answers at its URL) cannot make the server hold more.
async fn read_bounded(mut resp: Response, max: usize) -> Result<Vec<u8>, ClientError> {
    let url = strip_query(resp.url().as_str()).to_string();
    let too_big = |n: u64| {
        ClientError::Refused(format!(
            "{url} answered {n} bytes or more, beyond the {max} bytes read"
        ))
    };
    if let Some(n) = resp.content_length()
        && n > max as u64
    {
        return Err(too_big(n));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Unavailable(format!("reading {url}: {e}")))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_big((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn gitlab_project(event: &ForgeEvent) -> String {
    match event.project_id {
        Some(id) => id.to_string(),
        None => encode_segment(&event.repository),
    }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// GitHub answers 403 (or 429) with `x-ratelimit-remaining: 0` when the
/// primary rate limit is used up.
fn rate_limited(resp: &Response) -> bool {
    header(resp, "x-ratelimit-remaining").is_some_and(|v| v.trim() == "0")
        || header(resp, "retry-after").is_some()
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// How long the forge asks to wait: `Retry-After` (seconds), else the rate
/// limit reset (`x-ratelimit-reset` / `ratelimit-reset`, epoch seconds)
/// when nothing remains.
fn retry_after(resp: &Response) -> Option<Duration> {
    if let Some(secs) = header(resp, "retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let exhausted = ["x-ratelimit-remaining", "ratelimit-remaining"]
        .iter()
        .any(|h| header(resp, h).is_some_and(|v| v.trim() == "0"));
    if !exhausted {
        return None;
    }
    let reset = ["x-ratelimit-reset", "ratelimit-reset"]
        .iter()
        .find_map(|h| header(resp, h).and_then(|v| v.trim().parse::<u64>().ok()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(encode_path("ci/stage time.yaml"), "ci/stage%20time.yaml");
        assert_eq!(encode_segment("ci/.stagetime.yaml"), "ci%2F.stagetime.yaml");
        assert_eq!(
            encode_path("Codertocat/Hello-World"),
            "Codertocat/Hello-World"
        );
    }
}

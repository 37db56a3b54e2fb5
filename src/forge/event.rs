//! Each forge's webhook payload, parsed into one provider-neutral
//! [`ForgeEvent`].
//!
//! Only the fields stagetime reads are declared; everything else in a
//! payload is ignored, so a forge adding fields changes nothing.

use serde::{Deserialize, Serialize};

use super::Provider;

/// What happened, as far as triggers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Commits pushed to a branch.
    Push,
    /// A tag pushed.
    Tag,
    /// A pull (merge) request opened, reopened or given new commits.
    PullRequest,
}

impl EventKind {
    /// The name used in the repositories file, `when.events` and annotations.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::Tag => "tag",
            EventKind::PullRequest => "pull_request",
        }
    }

    /// Parses [`EventKind::as_str`].
    pub fn parse(s: &str) -> Option<EventKind> {
        [EventKind::Push, EventKind::Tag, EventKind::PullRequest]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One webhook event, the same shape for every forge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeEvent {
    /// The forge that sent it.
    pub provider: Provider,
    /// The forge's delivery id (GitHub keeps it on a redelivery; other
    /// forges may send a new one, which the deterministic run id absorbs).
    pub delivery: String,
    /// Push, tag or pull request.
    pub kind: EventKind,
    /// The repository's `owner/name` (GitLab: `path_with_namespace`).
    pub repository: String,
    /// GitLab's numeric project id (its API addresses projects by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
    /// The full ref (`refs/heads/main`, `refs/tags/v1`; for a pull request
    /// the head branch's ref).
    pub git_ref: String,
    /// The branch pushed to, or the pull request's head (source) branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The tag pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The commit to run (push: `after`; pull request: the head commit).
    pub commit: String,
    /// The commit before a push (to compare changed files), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The pull request's number (GitLab: the merge request's `iid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    /// The pull request's target (base) branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_branch: Option<String>,
    /// Who caused the event (login / username).
    pub sender: String,
    /// The head commit's author, when the payload says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The head commit's time (RFC 3339), when the payload says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<String>,
    /// The changed files from the payload; `None` when it cannot tell (a pull
    /// request, or a push whose commit list was truncated): the forge API
    /// is asked when a `paths` filter needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_files: Option<Vec<String>>,
    /// The pull request comes from another repository (a fork).
    #[serde(default)]
    pub fork: bool,
    /// The payload's action (`opened`, `synchronize`, `update`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// A command given in a pull request comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// `/retest` (the failed and cancelled tasks of the latest run) or
    /// `/retest NAME`.
    Retest {
        /// The task named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<String>,
    },
    /// `/cancel`: cancel the latest run.
    Cancel,
    /// `/ok-to-test`: a trusted user lets a fork's pull request run.
    OkToTest,
    /// GitHub's "Re-run" of a check run (`check_run` `rerequested`, the run
    /// id in its `external_id`) or of a commit's checks (`check_suite`
    /// `rerequested`): rerun keeping succeeded tasks.
    Rerequested {
        /// The run (the check run's `external_id`), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        /// The commit (`head_sha`).
        commit: String,
    },
}

impl Command {
    /// The command in a comment's text: the first line that starts with
    /// `/retest`, `/cancel` or `/ok-to-test` (other lines and other
    /// slash words are ignored); `None` when there is none.
    pub fn parse(text: &str) -> Option<Command> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            let command = match words.next()? {
                "/retest" => Command::Retest {
                    task: words.next().map(str::to_string),
                },
                "/cancel" => Command::Cancel,
                "/ok-to-test" => Command::OkToTest,
                _ => return None,
            };
            Some(command)
        })
    }

    /// The command as written (`/retest NAME`).
    pub fn text(&self) -> String {
        match self {
            Command::Retest { task: None } => "/retest".to_string(),
            Command::Retest { task: Some(t) } => format!("/retest {t}"),
            Command::Cancel => "/cancel".to_string(),
            Command::OkToTest => "/ok-to-test".to_string(),
            Command::Rerequested { .. } => "re-run".to_string(),
        }
    }
}

/// A command from a new comment on a pull (merge) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentCommand {
    /// The forge.
    pub provider: Provider,
    /// The delivery id.
    pub delivery: String,
    /// The repository's `owner/name`.
    pub repository: String,
    /// GitLab's project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
    /// The pull request's number (GitLab: the merge request's `iid`; 0 for
    /// a check's re-run, which has none).
    pub pr: u64,
    /// Who wrote the comment (login / username).
    pub commenter: String,
    /// GitLab's user id (its member API addresses users by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commenter_id: Option<u64>,
    /// What was asked.
    pub command: Command,
}

/// What a payload amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An event that may start a run.
    Event(Box<ForgeEvent>),
    /// A command in a new pull request comment.
    Command(Box<CommentCommand>),
    /// Answered 2xx and otherwise ignored (ping, branch deletion, a closed
    /// pull request, events stagetime does not act on), with the reason.
    Ignored(String),
}

/// The repository a payload is about, as its web and clone URLs, to find
/// its entry in the repositories file before the signature can be checked.
///
/// # Errors
/// A message naming what is missing when the payload names no repository.
pub fn repository_urls(
    provider: Provider,
    payload: &serde_json::Value,
) -> Result<Vec<String>, String> {
    let repo = match provider {
        Provider::Github | Provider::Gitea => payload.get("repository"),
        Provider::Gitlab => payload.get("project"),
    }
    .ok_or_else(|| match provider {
        Provider::Gitlab => "the payload has no `project`".to_string(),
        _ => "the payload has no `repository`".to_string(),
    })?;
    let keys: &[&str] = match provider {
        Provider::Github | Provider::Gitea => &["html_url", "clone_url", "url", "ssh_url"],
        Provider::Gitlab => &["web_url", "git_http_url", "git_ssh_url", "http_url"],
    };
    let urls: Vec<String> = keys
        .iter()
        .filter_map(|k| repo.get(*k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err("the payload's repository has no URL".to_string());
    }
    Ok(urls)
}

/// A URL reduced for comparison: lowercase, no trailing `/` or `.git`.
pub fn normalise_url(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    let url = url.trim_end_matches('/');
    url.strip_suffix(".git").unwrap_or(url).to_string()
}

fn is_zero(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    author: Option<Author>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

#[derive(Deserialize)]
struct Author {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl User {
    fn name(&self) -> String {
        self.login
            .clone()
            .or_else(|| self.username.clone())
            .unwrap_or_default()
    }
}

/// GitHub's and Gitea's `repository` object.
#[derive(Deserialize)]
struct Repo {
    full_name: String,
}

/// GitHub's and Gitea's push payload (they share the shape).
#[derive(Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: Option<String>,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    head_commit: Option<Commit>,
    /// Gitea: how many commits the push had (the list may be shorter).
    #[serde(default)]
    total_commits: Option<usize>,
    repository: Repo,
    #[serde(default)]
    sender: Option<User>,
    #[serde(default)]
    pusher: Option<PushUser>,
}

#[derive(Deserialize)]
struct PushUser {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

/// GitHub's and Gitea's pull request payload.
#[derive(Deserialize)]
struct HubPull {
    action: String,
    number: u64,
    pull_request: HubPullRequest,
    repository: Repo,
    #[serde(default)]
    sender: Option<User>,
}

#[derive(Deserialize)]
struct HubPullRequest {
    head: HubBranch,
    base: HubBranch,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct HubBranch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// Null when the head repository (a fork) was deleted.
    #[serde(default)]
    repo: Option<Repo>,
    /// Gitea: the repository's id.
    #[serde(default)]
    repo_id: Option<u64>,
}

/// Parses a GitHub or Gitea (Forgejo) payload of event type `event`
/// (`X-GitHub-Event` / `X-Gitea-Event`).
///
/// # Errors
/// A message naming the field when the payload does not have the
/// documented shape.
pub fn parse_hub(
    provider: Provider,
    event: &str,
    delivery: &str,
    payload: serde_json::Value,
) -> Result<Parsed, String> {
    match event {
        "ping" => Ok(Parsed::Ignored("ping".to_string())),
        "push" => {
            let p: HubPush =
                serde_json::from_value(payload).map_err(|e| format!("push payload: {e}"))?;
            if p.deleted || is_zero(&p.after) {
                return Ok(Parsed::Ignored(format!("{} deleted", p.git_ref)));
            }
            let (kind, branch, tag) = split_ref(&p.git_ref)?;
            let truncated = p.total_commits.is_some_and(|n| n > p.commits.len())
                // GitHub lists at most 2,048 commits (and none for a new
                // branch pushed without new commits: then nothing changed).
                || p.commits.len() >= 2048;
            // A new branch lists only the commits new to the repository
            // (often none): what it changes is unknown.
            let created = p.before.as_deref().is_some_and(is_zero);
            let changed = (!truncated && !created).then(|| changed_files(&p.commits));
            let head = p.head_commit.as_ref().or(p.commits.last());
            let sender = p
                .sender
                .as_ref()
                .map(User::name)
                .or_else(|| {
                    p.pusher
                        .as_ref()
                        .and_then(|u| u.login.clone().or(u.username.clone()).or(u.name.clone()))
                })
                .unwrap_or_default();
            Ok(Parsed::Event(Box::new(ForgeEvent {
                provider,
                delivery: delivery.to_string(),
                kind,
                repository: p.repository.full_name,
                project_id: None,
                git_ref: p.git_ref.clone(),
                branch,
                tag,
                commit: p.after,
                before: p.before.filter(|b| !is_zero(b)),
                pr: None,
                target_branch: None,
                sender,
                author: head.and_then(commit_author),
                pushed_at: head.and_then(|c| c.timestamp.clone()),
                changed_files: changed,
                fork: false,
                action: None,
            })))
        }
        "pull_request" => {
            let p: HubPull = serde_json::from_value(payload)
                .map_err(|e| format!("pull_request payload: {e}"))?;
            // GitHub: synchronize; Gitea/Forgejo: synchronized.
            if !matches!(
                p.action.as_str(),
                "opened" | "reopened" | "synchronize" | "synchronized"
            ) {
                return Ok(Parsed::Ignored(format!("pull request {}", p.action)));
            }
            let pr = p.pull_request;
            let fork = match provider {
                Provider::Gitea if pr.head.repo_id.is_some() && pr.base.repo_id.is_some() => {
                    pr.head.repo_id != pr.base.repo_id
                }
                _ => match &pr.head.repo {
                    Some(head) => !head.full_name.eq_ignore_ascii_case(&p.repository.full_name),
                    None => true,
                },
            };
            let sender = p
                .sender
                .as_ref()
                .or(pr.user.as_ref())
                .map(User::name)
                .unwrap_or_default();
            Ok(Parsed::Event(Box::new(ForgeEvent {
                provider,
                delivery: delivery.to_string(),
                kind: EventKind::PullRequest,
                repository: p.repository.full_name,
                project_id: None,
                git_ref: format!("refs/heads/{}", pr.head.git_ref),
                branch: Some(pr.head.git_ref),
                tag: None,
                commit: pr.head.sha,
                before: None,
                pr: Some(p.number),
                target_branch: Some(pr.base.git_ref),
                sender,
                author: pr.user.as_ref().map(User::name),
                pushed_at: pr.updated_at,
                changed_files: None,
                fork,
                action: Some(p.action),
            })))
        }
        "check_run" | "check_suite" if provider == Provider::Github => {
            let p: HubCheck =
                serde_json::from_value(payload).map_err(|e| format!("{event} payload: {e}"))?;
            if p.action != "rerequested" {
                return Ok(Parsed::Ignored(format!("{event} {}", p.action)));
            }
            let (run, commit) = match (p.check_run, p.check_suite) {
                (Some(c), _) => (c.external_id.filter(|x| !x.is_empty()), c.head_sha),
                (None, Some(s)) => (None, s.head_sha),
                (None, None) => return Err(format!("{event} payload: no {event}")),
            };
            Ok(Parsed::Command(Box::new(CommentCommand {
                provider,
                delivery: delivery.to_string(),
                repository: p.repository.full_name,
                project_id: None,
                pr: 0,
                commenter: p.sender.map(|u| u.name()).unwrap_or_default(),
                commenter_id: None,
                command: Command::Rerequested { run, commit },
            })))
        }
        // Gitea sends comments on pull requests as `pull_request_comment`
        // (older versions: `issue_comment` with `is_pull`).
        "issue_comment" | "pull_request_comment" => {
            let p: HubComment = serde_json::from_value(payload)
                .map_err(|e| format!("issue_comment payload: {e}"))?;
            if p.action != "created" {
                return Ok(Parsed::Ignored(format!("comment {}", p.action)));
            }
            let on_pull = p.issue.pull_request.as_ref().is_some_and(|v| !v.is_null())
                || p.is_pull == Some(true);
            if !on_pull {
                return Ok(Parsed::Ignored("comment on an issue".to_string()));
            }
            let Some(command) = Command::parse(&p.comment.body) else {
                return Ok(Parsed::Ignored("comment without a command".to_string()));
            };
            Ok(Parsed::Command(Box::new(CommentCommand {
                provider,
                delivery: delivery.to_string(),
                repository: p.repository.full_name,
                project_id: None,
                pr: p.issue.number,
                commenter: p.comment.user.name(),
                commenter_id: None,
                command,
            })))
        }
        other => Ok(Parsed::Ignored(format!("event {other:?}"))),
    }
}

/// GitHub's `check_run` and `check_suite` payloads.
#[derive(Deserialize)]
struct HubCheck {
    action: String,
    #[serde(default)]
    check_run: Option<HubCheckObject>,
    #[serde(default)]
    check_suite: Option<HubCheckObject>,
    repository: Repo,
    #[serde(default)]
    sender: Option<User>,
}

#[derive(Deserialize)]
struct HubCheckObject {
    head_sha: String,
    #[serde(default)]
    external_id: Option<String>,
}

/// GitHub's and Gitea's `issue_comment` payload.
#[derive(Deserialize)]
struct HubComment {
    action: String,
    issue: HubIssue,
    comment: HubCommentBody,
    repository: Repo,
    /// Gitea: the issue is a pull request.
    #[serde(default)]
    is_pull: Option<bool>,
}

#[derive(Deserialize)]
struct HubIssue {
    number: u64,
    /// Present (GitHub: an object of URLs) when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct HubCommentBody {
    #[serde(default)]
    body: String,
    user: User,
}

/// GitLab's note payload (a comment).
#[derive(Deserialize)]
struct GitlabNote {
    user: GitlabUser,
    project: GitlabProject,
    object_attributes: GitlabNoteAttributes,
    #[serde(default)]
    merge_request: Option<GitlabNoteMerge>,
}

#[derive(Deserialize)]
struct GitlabUser {
    id: u64,
    username: String,
}

#[derive(Deserialize)]
struct GitlabNoteAttributes {
    #[serde(default)]
    note: String,
    noteable_type: String,
    /// `create` or `update` (newer GitLab versions send edits too).
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize)]
struct GitlabNoteMerge {
    iid: u64,
}

#[derive(Deserialize)]
struct GitlabProject {
    id: u64,
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GitlabPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: Option<String>,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    user_username: Option<String>,
    project: GitlabProject,
    #[serde(default)]
    commits: Vec<Commit>,
    #[serde(default)]
    total_commits_count: Option<usize>,
}

#[derive(Deserialize)]
struct GitlabMerge {
    user: User,
    project: GitlabProject,
    object_attributes: GitlabMergeAttributes,
}

#[derive(Deserialize)]
struct GitlabMergeAttributes {
    iid: u64,
    target_branch: String,
    source_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    #[serde(default)]
    action: Option<String>,
    /// Present on `update` when new commits were pushed.
    #[serde(default)]
    oldrev: Option<String>,
    last_commit: Commit,
    #[serde(default)]
    updated_at: Option<String>,
}

/// Parses a GitLab payload of event type `event` (`X-Gitlab-Event`, e.g.
/// `Push Hook`).
///
/// # Errors
/// A message naming the field when the payload does not have the
/// documented shape.
pub fn parse_gitlab(
    event: &str,
    delivery: &str,
    payload: serde_json::Value,
) -> Result<Parsed, String> {
    match event {
        "Push Hook" | "Tag Push Hook" => {
            let p: GitlabPush =
                serde_json::from_value(payload).map_err(|e| format!("push payload: {e}"))?;
            if is_zero(&p.after) || p.checkout_sha.as_deref().is_some_and(str::is_empty) {
                return Ok(Parsed::Ignored(format!("{} deleted", p.git_ref)));
            }
            let (kind, branch, tag) = split_ref(&p.git_ref)?;
            // GitLab lists at most 20 commits and counts them all.
            let truncated = p.total_commits_count.is_some_and(|n| n > p.commits.len());
            let created = p.before.as_deref().is_some_and(is_zero);
            let changed = (!truncated && !created).then(|| changed_files(&p.commits));
            let head = p.commits.iter().find(|c| c.id == p.after);
            Ok(Parsed::Event(Box::new(ForgeEvent {
                provider: Provider::Gitlab,
                delivery: delivery.to_string(),
                kind,
                repository: p.project.path_with_namespace,
                project_id: Some(p.project.id),
                git_ref: p.git_ref.clone(),
                branch,
                tag,
                commit: p.checkout_sha.unwrap_or(p.after),
                before: p.before.filter(|b| !is_zero(b)),
                pr: None,
                target_branch: None,
                sender: p.user_username.unwrap_or_default(),
                author: head.and_then(commit_author),
                pushed_at: head.and_then(|c| c.timestamp.clone()),
                changed_files: changed,
                fork: false,
                action: None,
            })))
        }
        "Merge Request Hook" => {
            let p: GitlabMerge = serde_json::from_value(payload)
                .map_err(|e| format!("merge request payload: {e}"))?;
            let a = p.object_attributes;
            let action = a.action.clone().unwrap_or_default();
            let starts = match action.as_str() {
                "open" | "reopen" => true,
                // An update without `oldrev` changed the title, labels, ...
                "update" => a.oldrev.is_some(),
                _ => false,
            };
            if !starts {
                return Ok(Parsed::Ignored(format!("merge request {action}")));
            }
            Ok(Parsed::Event(Box::new(ForgeEvent {
                provider: Provider::Gitlab,
                delivery: delivery.to_string(),
                kind: EventKind::PullRequest,
                repository: p.project.path_with_namespace,
                project_id: Some(p.project.id),
                git_ref: format!("refs/heads/{}", a.source_branch),
                branch: Some(a.source_branch),
                tag: None,
                commit: a.last_commit.id.clone(),
                before: None,
                pr: Some(a.iid),
                target_branch: Some(a.target_branch),
                sender: p.user.name(),
                author: commit_author(&a.last_commit),
                pushed_at: a.last_commit.timestamp.clone().or(a.updated_at),
                changed_files: None,
                fork: a.source_project_id != a.target_project_id,
                action: Some(action),
            })))
        }
        "Note Hook" => {
            let p: GitlabNote =
                serde_json::from_value(payload).map_err(|e| format!("note payload: {e}"))?;
            let a = p.object_attributes;
            if a.action.as_deref().is_some_and(|x| x != "create") {
                return Ok(Parsed::Ignored(format!(
                    "note {}",
                    a.action.unwrap_or_default()
                )));
            }
            let (true, Some(mr)) = (a.noteable_type == "MergeRequest", p.merge_request) else {
                return Ok(Parsed::Ignored(format!("note on a {}", a.noteable_type)));
            };
            let Some(command) = Command::parse(&a.note) else {
                return Ok(Parsed::Ignored("note without a command".to_string()));
            };
            Ok(Parsed::Command(Box::new(CommentCommand {
                provider: Provider::Gitlab,
                delivery: delivery.to_string(),
                repository: p.project.path_with_namespace,
                project_id: Some(p.project.id),
                pr: mr.iid,
                commenter: p.user.username,
                commenter_id: Some(p.user.id),
                command,
            })))
        }
        other => Ok(Parsed::Ignored(format!("event {other:?}"))),
    }
}

fn commit_author(c: &Commit) -> Option<String> {
    c.author.as_ref().and_then(|a| {
        a.username
            .clone()
            .filter(|u| !u.is_empty())
            .or(a.name.clone())
    })
}

fn changed_files(commits: &[Commit]) -> Vec<String> {
    let mut files: Vec<String> = commits
        .iter()
        .flat_map(|c| c.added.iter().chain(&c.removed).chain(&c.modified))
        .cloned()
        .collect();
    files.sort();
    files.dedup();
    files
}

/// `refs/heads/x` → push to branch `x`; `refs/tags/v` → tag `v`.
fn split_ref(git_ref: &str) -> Result<(EventKind, Option<String>, Option<String>), String> {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        Ok((EventKind::Push, Some(b.to_string()), None))
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        Ok((EventKind::Tag, None, Some(t.to_string())))
    } else {
        Err(format!("ref {git_ref:?} is neither a branch nor a tag"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> serde_json::Value {
        let text = match name {
            "github-push" => include_str!("../../tests/fixtures/forge/github-push.json"),
            "github-pull_request" => {
                include_str!("../../tests/fixtures/forge/github-pull_request.json")
            }
            "gitlab-push" => include_str!("../../tests/fixtures/forge/gitlab-push.json"),
            "gitlab-merge_request" => {
                include_str!("../../tests/fixtures/forge/gitlab-merge_request.json")
            }
            "gitea-push" => include_str!("../../tests/fixtures/forge/gitea-push.json"),
            "github-issue_comment" => {
                include_str!("../../tests/fixtures/forge/github-issue_comment.json")
            }
            "gitlab-note" => include_str!("../../tests/fixtures/forge/gitlab-note.json"),
            "gitea-issue_comment" => {
                include_str!("../../tests/fixtures/forge/gitea-issue_comment.json")
            }
            _ => include_str!("../../tests/fixtures/forge/gitea-pull_request.json"),
        };
        serde_json::from_str(text).unwrap()
    }

    fn event(p: Result<Parsed, String>) -> ForgeEvent {
        match p.unwrap() {
            Parsed::Event(e) => *e,
            other => panic!("not an event: {other:?}"),
        }
    }

    fn command(p: Result<Parsed, String>) -> CommentCommand {
        match p.unwrap() {
            Parsed::Command(c) => *c,
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn commands_are_read_from_the_first_command_line() {
        assert_eq!(
            Command::parse("/retest"),
            Some(Command::Retest { task: None })
        );
        assert_eq!(
            Command::parse("flaky again?\n/retest  unit-tests \nthanks"),
            Some(Command::Retest {
                task: Some("unit-tests".into())
            })
        );
        assert_eq!(Command::parse(" /cancel"), Some(Command::Cancel));
        assert_eq!(Command::parse("/ok-to-test"), Some(Command::OkToTest));
        assert_eq!(
            Command::parse("please /retest"),
            None,
            "not at a line start"
        );
        assert_eq!(Command::parse("/retesting"), None);
        assert_eq!(Command::parse("/lgtm"), None);
    }

    #[test]
    fn pull_request_comments_on_each_forge() {
        let c = command(parse_hub(
            Provider::Github,
            "issue_comment",
            "c1",
            fixture("github-issue_comment"),
        ));
        assert_eq!(
            (
                c.pr,
                c.commenter.as_str(),
                c.repository.as_str(),
                &c.command
            ),
            (
                2,
                "Codertocat",
                "Codertocat/Hello-World",
                &Command::Retest { task: None }
            )
        );
        let l = command(parse_gitlab("Note Hook", "n1", fixture("gitlab-note")));
        assert_eq!(
            (l.pr, l.commenter.as_str(), l.commenter_id, l.project_id),
            (1, "root", Some(1), Some(5))
        );
        let g = command(parse_hub(
            Provider::Gitea,
            "issue_comment",
            "g1",
            fixture("gitea-issue_comment"),
        ));
        assert_eq!((g.pr, &g.command), (3, &Command::Cancel));
        let g = command(parse_hub(
            Provider::Gitea,
            "pull_request_comment",
            "g2",
            fixture("gitea-issue_comment"),
        ));
        assert_eq!(g.commenter, "gitea");
    }

    #[test]
    fn edited_deleted_and_issue_comments_do_nothing() {
        for action in ["edited", "deleted"] {
            let mut p = fixture("github-issue_comment");
            p["action"] = serde_json::json!(action);
            assert!(matches!(
                parse_hub(Provider::Github, "issue_comment", "d", p),
                Ok(Parsed::Ignored(_))
            ));
        }
        let mut issue = fixture("github-issue_comment");
        issue["issue"]
            .as_object_mut()
            .unwrap()
            .remove("pull_request");
        assert!(matches!(
            parse_hub(Provider::Github, "issue_comment", "d", issue),
            Ok(Parsed::Ignored(_))
        ));
        let mut plain = fixture("github-issue_comment");
        plain["comment"]["body"] = serde_json::json!("LGTM");
        assert!(matches!(
            parse_hub(Provider::Github, "issue_comment", "d", plain),
            Ok(Parsed::Ignored(_))
        ));
        let mut edit = fixture("gitlab-note");
        edit["object_attributes"]["action"] = serde_json::json!("update");
        assert!(matches!(
            parse_gitlab("Note Hook", "d", edit),
            Ok(Parsed::Ignored(_))
        ));
        let mut on_commit = fixture("gitlab-note");
        on_commit["object_attributes"]["noteable_type"] = serde_json::json!("Commit");
        assert!(matches!(
            parse_gitlab("Note Hook", "d", on_commit),
            Ok(Parsed::Ignored(_))
        ));
    }

    #[test]
    fn github_push_and_pull_request() {
        let e = event(parse_hub(
            Provider::Github,
            "push",
            "d1",
            fixture("github-push"),
        ));
        assert_eq!(
            (e.kind, e.branch.as_deref(), e.repository.as_str()),
            (EventKind::Push, Some("main"), "Codertocat/Hello-World")
        );
        assert_eq!(e.changed_files, Some(vec!["README.md".to_string()]));
        assert_eq!(
            (e.sender.as_str(), e.author.as_deref()),
            ("Codertocat", Some("Codertocat"))
        );
        assert_eq!(
            e.before.as_deref(),
            Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
        );
        let mut created = fixture("github-push");
        created["before"] = serde_json::json!("0000000000000000000000000000000000000000");
        created["created"] = serde_json::json!(true);
        created["commits"] = serde_json::json!([]);
        let c = event(parse_hub(Provider::Github, "push", "d0", created));
        assert_eq!(
            (c.changed_files, c.before),
            (None, None),
            "a new branch: changes unknown"
        );
        let pr = event(parse_hub(
            Provider::Github,
            "pull_request",
            "d2",
            fixture("github-pull_request"),
        ));
        assert_eq!(pr.kind, EventKind::PullRequest);
        assert_eq!(
            (pr.pr, pr.target_branch.as_deref(), pr.branch.as_deref()),
            (Some(2), Some("main"), Some("changes"))
        );
        assert_eq!(pr.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert!(!pr.fork && pr.changed_files.is_none());
        let urls = repository_urls(Provider::Github, &fixture("github-push")).unwrap();
        assert!(urls.contains(&"https://github.com/Codertocat/Hello-World.git".to_string()));
    }

    #[test]
    fn deletions_closed_and_other_events_are_ignored() {
        let mut p = fixture("github-push");
        p["deleted"] = serde_json::json!(true);
        assert!(matches!(
            parse_hub(Provider::Github, "push", "d", p),
            Ok(Parsed::Ignored(_))
        ));
        let mut g = fixture("gitlab-push");
        g["after"] = serde_json::json!("0000000000000000000000000000000000000000");
        g["checkout_sha"] = serde_json::Value::Null;
        assert!(matches!(
            parse_gitlab("Push Hook", "d", g),
            Ok(Parsed::Ignored(_))
        ));
        let mut c = fixture("github-pull_request");
        c["action"] = serde_json::json!("closed");
        assert!(matches!(
            parse_hub(Provider::Github, "pull_request", "d", c),
            Ok(Parsed::Ignored(_))
        ));
        assert!(matches!(
            parse_hub(Provider::Github, "issues", "d", serde_json::json!({})),
            Ok(Parsed::Ignored(_))
        ));
        assert!(matches!(
            parse_gitlab("Issue Hook", "d", serde_json::json!({})),
            Ok(Parsed::Ignored(_))
        ));
    }

    #[test]
    fn gitlab_push_tag_and_merge_request() {
        let e = event(parse_gitlab("Push Hook", "u1", fixture("gitlab-push")));
        assert_eq!(
            (e.repository.as_str(), e.project_id, e.branch.as_deref()),
            ("mike/diaspora", Some(15), Some("master"))
        );
        assert_eq!(e.changed_files.as_ref().map(Vec::len), Some(2));
        let mut truncated = fixture("gitlab-push");
        truncated["total_commits_count"] = serde_json::json!(30);
        assert_eq!(
            event(parse_gitlab("Push Hook", "u", truncated)).changed_files,
            None,
            "truncated: ask the API"
        );
        let mut tag = fixture("gitlab-push");
        tag["ref"] = serde_json::json!("refs/tags/v1.0.0");
        let t = event(parse_gitlab("Tag Push Hook", "u", tag));
        assert_eq!((t.kind, t.tag.as_deref()), (EventKind::Tag, Some("v1.0.0")));
        let mr = event(parse_gitlab(
            "Merge Request Hook",
            "u2",
            fixture("gitlab-merge_request"),
        ));
        assert_eq!(
            (mr.pr, mr.target_branch.as_deref(), mr.sender.as_str()),
            (Some(1), Some("master"), "root")
        );
        let mut fork = fixture("gitlab-merge_request");
        fork["object_attributes"]["source_project_id"] = serde_json::json!(99);
        assert!(event(parse_gitlab("Merge Request Hook", "u", fork)).fork);
    }

    #[test]
    fn gitea_push_and_pull_request() {
        let e = event(parse_hub(
            Provider::Gitea,
            "push",
            "g1",
            fixture("gitea-push"),
        ));
        assert_eq!(
            (
                e.repository.as_str(),
                e.branch.as_deref(),
                e.sender.as_str()
            ),
            ("gitea/webhooks", Some("develop"), "gitea")
        );
        let mut sync = fixture("gitea-pull_request");
        sync["action"] = serde_json::json!("synchronized");
        let pr = event(parse_hub(Provider::Gitea, "pull_request", "g2", sync));
        assert_eq!((pr.pr, pr.fork), (Some(3), false));
        let mut fork = fixture("gitea-pull_request");
        fork["pull_request"]["head"]["repo_id"] = serde_json::json!(141);
        assert!(event(parse_hub(Provider::Gitea, "pull_request", "g", fork)).fork);
    }

    #[test]
    fn a_wrong_shape_names_the_field() {
        let mut p = fixture("github-push");
        p["after"] = serde_json::json!(12);
        let err = parse_hub(Provider::Github, "push", "d", p).unwrap_err();
        assert!(
            err.contains("push payload") && err.contains("invalid type"),
            "{err}"
        );
        assert!(
            repository_urls(Provider::Gitlab, &serde_json::json!({}))
                .unwrap_err()
                .contains("project")
        );
    }
}

//! What to report to a forge about a run, without any IO: a
//! [`RunView`] becomes commit statuses (one aggregate context, optionally
//! one per stage) with a description a person reads at a glance, and each
//! forge's request body; and the rule deciding which statuses to send now
//! ([`due`]). The reporter loop ([`super::reporter`]) does the sending.
//!
//! The aggregate context follows the run's state, which already counts a
//! `can_fail` task's failure as acceptable; tasks a `when` did not select
//! are not in the run at all, so neither holds a required check back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stagetime_core::RunState;
use stagetime_core::view::{RunView, StagePhase, StageView};

use super::Provider;

/// The longest description sent: GitHub's limit (GitLab and Gitea allow
/// more; one limit keeps the three alike).
pub const MAX_DESCRIPTION: usize = 140;

/// The default aggregate context.
pub const DEFAULT_CONTEXT: &str = "stagetime";

/// A commit status's state, provider-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeState {
    /// Accepted, not started.
    Pending,
    /// Running (GitLab has the state; GitHub and Gitea show `pending`).
    Running,
    /// Succeeded (allowed failures included).
    Success,
    /// A task failed that was not allowed to.
    Failure,
    /// The run could not be made (missing or invalid pipeline file).
    Error,
    /// Cancelled (GitLab `canceled`; GitHub and Gitea `error`, their closest).
    Cancelled,
}

impl ForgeState {
    /// True for the states a run ends in.
    pub fn is_final(self) -> bool {
        !matches!(self, ForgeState::Pending | ForgeState::Running)
    }

    /// The state's name in `provider`'s API.
    pub fn wire(self, provider: Provider) -> &'static str {
        match (self, provider) {
            (ForgeState::Pending, _) => "pending",
            (ForgeState::Running, Provider::Gitlab) => "running",
            (ForgeState::Running, _) => "pending",
            (ForgeState::Success, _) => "success",
            (ForgeState::Failure, Provider::Gitlab) => "failed",
            (ForgeState::Failure, _) => "failure",
            (ForgeState::Error, Provider::Gitlab) => "failed",
            (ForgeState::Error, _) => "error",
            (ForgeState::Cancelled, Provider::Gitlab) => "canceled",
            (ForgeState::Cancelled, _) => "error",
        }
    }
}

/// How a repository's runs are reported (the repositories file's `report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSettings {
    /// Commit statuses are sent at all (default true).
    pub statuses: bool,
    /// The aggregate context (default [`DEFAULT_CONTEXT`]).
    pub context: String,
    /// Also one context per stage: `{context}/stage-{n}`, `{context}/finally`.
    pub per_stage: bool,
    /// Base URL of the run pages: a status links `{base}/runs/{id}`.
    pub target_url: Option<String>,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            statuses: true,
            context: DEFAULT_CONTEXT.to_string(),
            per_stage: false,
            target_url: None,
        }
    }
}

impl ReportSettings {
    /// The link to run `id`'s page, when a base URL is set.
    pub fn link(&self, id: &str) -> Option<String> {
        self.target_url
            .as_ref()
            .map(|base| format!("{}/runs/{id}", base.trim_end_matches('/')))
    }
}

/// One status to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The context (GitLab: the status's `name`).
    pub context: String,
    /// The state.
    pub state: ForgeState,
    /// What a person reads next to it.
    pub description: String,
}

/// The statuses of a run: the aggregate context, then one per stage when
/// `per_stage`.
pub fn statuses(view: &RunView, settings: &ReportSettings) -> Vec<Status> {
    let mut out = vec![Status {
        context: settings.context.clone(),
        state: run_state(view.state),
        description: describe(view),
    }];
    if settings.per_stage {
        for stage in &view.stages {
            let name = match stage.number {
                Some(n) => format!("{}/stage-{n}", settings.context),
                None => format!("{}/finally", settings.context),
            };
            out.push(Status {
                context: name,
                state: stage_state(stage, view.state),
                description: describe_stage(stage),
            });
        }
    }
    out
}

/// The status of a delivery that could not become a run (e.g. the pipeline
/// file is missing or invalid): `error` with the reason, shortened.
pub fn error_status(reason: &str, settings: &ReportSettings) -> Status {
    Status {
        context: settings.context.clone(),
        state: ForgeState::Error,
        description: shorten(reason),
    }
}

fn run_state(state: RunState) -> ForgeState {
    match state {
        RunState::Queued => ForgeState::Pending,
        RunState::Running => ForgeState::Running,
        RunState::Succeeded => ForgeState::Success,
        RunState::Failed => ForgeState::Failure,
        RunState::Cancelled => ForgeState::Cancelled,
    }
}

/// A stage follows its phase; a stage that never ran takes the run's final
/// state (it was skipped because the run failed or was cancelled).
fn stage_state(stage: &StageView, run: RunState) -> ForgeState {
    match stage.phase {
        StagePhase::Running => ForgeState::Running,
        StagePhase::Succeeded => ForgeState::Success,
        StagePhase::Failed => ForgeState::Failure,
        StagePhase::Cancelled => ForgeState::Cancelled,
        StagePhase::Pending | StagePhase::Skipped if !run.is_finished() => ForgeState::Pending,
        StagePhase::Pending | StagePhase::Skipped => run_state(run),
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1h 2m`, `3m 4s`, `5s`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Where the run is, for people: `stage 2/3 · 5/7 tasks · 1 retry`;
/// `succeeded in 1m 3s · 7 tasks`; `failed: build, test`; `cancelled at
/// stage 2/3`. At most [`MAX_DESCRIPTION`] characters.
pub fn describe(view: &RunView) -> String {
    let main: Vec<&StageView> = view.stages.iter().filter(|s| s.number.is_some()).collect();
    let total = view.tasks.len() as u32;
    let done = view.tasks.iter().filter(|t| t.status.is_terminal()).count() as u32;
    let position = |stage: Option<&StageView>| match stage {
        Some(s) if s.number.is_none() => "finally".to_string(),
        Some(s) => {
            let i = main.iter().position(|m| m.number == s.number).unwrap_or(0);
            format!("stage {}/{}", i + 1, main.len())
        }
        None => format!("stage 1/{}", main.len().max(1)),
    };
    let retries = view.retries_used();
    let retry_note = if retries > 0 {
        format!(" · {}", plural(retries, "retry", "retries"))
    } else {
        String::new()
    };
    let text = match view.state {
        RunState::Queued => format!("queued · {}", plural(total, "task", "tasks")),
        RunState::Running => format!(
            "{} · {done}/{total} tasks{retry_note}",
            position(view.current_stage().or(view.last_started_stage()))
        ),
        RunState::Succeeded => {
            let allowed = view
                .tasks
                .iter()
                .filter(|t| {
                    t.can_fail
                        && matches!(
                            t.status,
                            stagetime_core::scheduler::TaskStatus::Failed
                                | stagetime_core::scheduler::TaskStatus::TimedOut
                        )
                })
                .count() as u32;
            let mut s = format!(
                "succeeded in {} · {}",
                duration(view.duration_ms(view.finished_ms.unwrap_or(view.updated_ms))),
                plural(total, "task", "tasks")
            );
            if allowed > 0 {
                s.push_str(&format!(
                    " · {}",
                    plural(allowed, "allowed failure", "allowed failures")
                ));
            }
            s + &retry_note
        }
        RunState::Failed => {
            let failed: Vec<&str> = view.failed_tasks().map(|t| t.name.as_str()).collect();
            if failed.is_empty() {
                // Quarantined or timed out as a whole: the first message says why.
                let why = view
                    .tasks
                    .iter()
                    .find_map(|t| t.message.as_deref())
                    .unwrap_or("the run failed");
                format!("failed: {why}")
            } else {
                format!(
                    "failed: {} ({})",
                    failed.join(", "),
                    position(view.last_started_stage())
                )
            }
        }
        RunState::Cancelled => format!("cancelled at {}", position(view.last_started_stage())),
    };
    shorten(&text)
}

fn describe_stage(stage: &StageView) -> String {
    let mut s = format!("{}/{} tasks succeeded", stage.succeeded, stage.total);
    if stage.failed > 0 {
        s.push_str(&format!(" · {} failed", stage.failed));
    }
    if stage.running > 0 {
        s.push_str(&format!(" · {} running", stage.running));
    }
    shorten(&s)
}

/// At most [`MAX_DESCRIPTION`] characters (on a character boundary), on
/// one line (a multi-line validation message is joined with spaces), with
/// `…` when cut.
pub fn shorten(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut out: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    out.push('…');
    out
}

/// Where a commit status goes: the repository (`owner/name`, GitLab's
/// `path_with_namespace`), GitLab's numeric project id when known, and the
/// commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The forge.
    pub provider: Provider,
    /// `owner/name`.
    pub repository: String,
    /// GitLab's project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
    /// The commit's sha.
    pub commit: String,
}

/// The path (below the API base URL) and JSON body of a commit status, as
/// each forge documents it:
/// - GitHub `POST /repos/{owner}/{repo}/statuses/{sha}` `{state,
///   target_url, description, context}`;
/// - GitLab `POST /projects/{id}/statuses/{sha}` `{state, name,
///   target_url, description}`;
/// - Gitea `POST /repos/{owner}/{repo}/statuses/{sha}` `{state,
///   target_url, description, context}`.
pub fn status_request(
    target: &Target,
    status: &Status,
    target_url: Option<&str>,
) -> (String, serde_json::Value) {
    let state = status.state.wire(target.provider);
    let mut body = serde_json::Map::new();
    body.insert("state".into(), state.into());
    match target.provider {
        Provider::Github | Provider::Gitea => {
            body.insert("context".into(), status.context.clone().into());
        }
        Provider::Gitlab => {
            body.insert("name".into(), status.context.clone().into());
        }
    }
    body.insert("description".into(), status.description.clone().into());
    if let Some(url) = target_url {
        body.insert("target_url".into(), url.into());
    }
    let path = match target.provider {
        Provider::Github | Provider::Gitea => format!(
            "/repos/{}/statuses/{}",
            encode_path(&target.repository),
            encode_segment(&target.commit)
        ),
        Provider::Gitlab => format!(
            "/projects/{}/statuses/{}",
            target
                .project_id
                .map_or_else(|| encode_segment(&target.repository), |id| id.to_string()),
            encode_segment(&target.commit)
        ),
    };
    (path, serde_json::Value::Object(body))
}

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

fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// GitHub's limit on a check run's `output.summary`.
pub const MAX_CHECK_SUMMARY: usize = 65_535;

/// A check run's `status` and `conclusion` for a state.
pub fn check_state(state: ForgeState) -> (&'static str, Option<&'static str>) {
    match state {
        ForgeState::Pending => ("queued", None),
        ForgeState::Running => ("in_progress", None),
        ForgeState::Success => ("completed", Some("success")),
        ForgeState::Failure | ForgeState::Error => ("completed", Some("failure")),
        ForgeState::Cancelled => ("completed", Some("cancelled")),
    }
}

/// The check run's name for a state as [`due`] compares it: `queued`,
/// `in_progress`, or the conclusion.
pub fn check_wire(state: ForgeState) -> &'static str {
    match check_state(state) {
        (_, Some(conclusion)) => conclusion,
        (status, None) => status,
    }
}

fn icon(status: stagetime_core::scheduler::TaskStatus) -> &'static str {
    use stagetime_core::scheduler::TaskStatus as S;
    match status {
        S::Succeeded => "✅",
        S::Failed | S::TimedOut => "❌",
        S::Cancelled => "⏹️",
        S::Skipped => "⏭️",
        S::Running | S::Backoff => "🔄",
        S::Waiting | S::Ready => "⏳",
    }
}

/// A check run's Markdown summary of a run: where it is, then a table of
/// its tasks by stage (state, attempts, duration, message), and the link
/// to the run's page; cut to [`MAX_CHECK_SUMMARY`] characters.
pub fn check_summary(view: &RunView, link: Option<&str>, now_ms: u64) -> String {
    let mut out = format!("**{}** · {}\n\n", view.state.as_str(), describe(view));
    if let Some(url) = link {
        out.push_str(&format!("[The run `{}`]({url})\n\n", view.id));
    }
    out.push_str(
        "| stage | task | state | attempts | duration | message |\n|---|---|---|---|---|---|\n",
    );
    for stage in &view.stages {
        for t in view.tasks_of(stage) {
            let duration = t.duration_ms(now_ms).map(duration).unwrap_or_default();
            let message = t
                .message
                .as_deref()
                .map(|m| shorten(m).replace('|', "\\|"))
                .unwrap_or_default();
            let note = if t.can_fail { " (may fail)" } else { "" };
            out.push_str(&format!(
                "| {} | `{}`{note} | {} {} | {} | {duration} | {message} |\n",
                stage.label(),
                t.name,
                icon(t.status),
                t.status,
                t.attempt,
            ));
        }
    }
    cut_summary(out)
}

fn cut_summary(text: String) -> String {
    if text.chars().count() <= MAX_CHECK_SUMMARY {
        return text;
    }
    const TAIL: &str = "\n\n… (cut: see the run's page for every task)";
    let mut out: String = text
        .chars()
        .take(MAX_CHECK_SUMMARY - TAIL.chars().count())
        .collect();
    out.push_str(TAIL);
    out
}

/// The request creating (`id` absent: `POST /repos/{owner}/{repo}/check-runs`)
/// or updating (`PATCH /repos/{owner}/{repo}/check-runs/{id}`) a run's check
/// run, as GitHub documents it: `name`, `head_sha`, `external_id` (the run
/// id) on creation; `status`, `conclusion` and `completed_at` once over,
/// `details_url`, `output { title, summary }`. Answers (is a PATCH, path,
/// body).
pub fn check_run_request(
    target: &Target,
    id: Option<u64>,
    run: &str,
    status: &Status,
    summary: &str,
    details_url: Option<&str>,
    now_rfc3339: &str,
) -> (bool, String, serde_json::Value) {
    let (state, conclusion) = check_state(status.state);
    let mut body = serde_json::Map::new();
    if id.is_none() {
        body.insert("name".into(), status.context.clone().into());
        body.insert("head_sha".into(), target.commit.clone().into());
        body.insert("external_id".into(), run.into());
    }
    body.insert("status".into(), state.into());
    if let Some(c) = conclusion {
        body.insert("conclusion".into(), c.into());
        body.insert("completed_at".into(), now_rfc3339.into());
    }
    if let Some(url) = details_url {
        body.insert("details_url".into(), url.into());
    }
    body.insert(
        "output".into(),
        serde_json::json!({ "title": status.description, "summary": summary }),
    );
    let base = format!("/repos/{}/check-runs", encode_path(&target.repository));
    match id {
        None => (false, base, serde_json::Value::Object(body)),
        Some(id) => (
            true,
            format!("{base}/{id}"),
            serde_json::Value::Object(body),
        ),
    }
}

/// What was last sent for one context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The state sent.
    pub state: ForgeState,
    /// The description sent.
    pub description: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// The decision for one round: what to send now, and whether anything is
/// left for later (a description change held back by coalescing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Statuses to send now, in order.
    pub send: Vec<Status>,
    /// Something changed that waits for the coalescing window.
    pub held: bool,
}

/// Which of `desired` to send now, given what was `sent`. States are
/// compared as the forge sees them (GitHub and Gitea show a running run as
/// `pending`):
/// - a context reported for the first time starts with `pending` (the run
///   was accepted), then its current state when the forge shows that
///   differently;
/// - a changed state is sent at once (every transition, the final state
///   always);
/// - a changed description within the same state waits until `coalesce_ms`
///   after the last send of that context, and is never sent to GitLab
///   (which refuses a status in the state it already has) nor for a final
///   state.
pub fn due(
    provider: Provider,
    desired: &[Status],
    sent: &BTreeMap<String, Sent>,
    now_ms: u64,
    coalesce_ms: u64,
) -> Due {
    due_with(
        &|s| s.wire(provider),
        provider != Provider::Gitlab,
        desired,
        sent,
        now_ms,
        coalesce_ms,
    )
}

/// [`due`] for a check run: its states are `queued`, `in_progress` and the
/// conclusions, and its summary may be updated within a state.
pub fn due_check(
    desired: &Status,
    sent: &BTreeMap<String, Sent>,
    now_ms: u64,
    coalesce_ms: u64,
) -> Due {
    due_with(
        &check_wire,
        true,
        std::slice::from_ref(desired),
        sent,
        now_ms,
        coalesce_ms,
    )
}

fn due_with(
    wire_of: &dyn Fn(ForgeState) -> &'static str,
    updates_in_state: bool,
    desired: &[Status],
    sent: &BTreeMap<String, Sent>,
    now_ms: u64,
    coalesce_ms: u64,
) -> Due {
    let mut out = Due {
        send: Vec::new(),
        held: false,
    };
    let pending = wire_of(ForgeState::Pending);
    for status in desired {
        let wire = wire_of(status.state);
        match sent.get(&status.context) {
            None => {
                if wire != pending && status.state != ForgeState::Error {
                    out.send.push(Status {
                        context: status.context.clone(),
                        state: ForgeState::Pending,
                        description: "accepted".to_string(),
                    });
                }
                out.send.push(status.clone());
            }
            Some(prev) if wire_of(prev.state) != wire => out.send.push(status.clone()),
            Some(prev) if prev.description == status.description => {}
            Some(_) if status.state.is_final() || !updates_in_state => {}
            Some(prev) if now_ms.saturating_sub(prev.at_ms) >= coalesce_ms => {
                out.send.push(status.clone());
            }
            Some(_) => out.held = true,
        }
    }
    out
}

/// True when `sent` shows every one of `desired` as the forge sees it.
pub fn all_sent(provider: Provider, desired: &[Status], sent: &BTreeMap<String, Sent>) -> bool {
    desired.iter().all(|s| {
        sent.get(&s.context)
            .is_some_and(|p| p.state.wire(provider) == s.state.wire(provider))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagetime_core::scheduler::TaskStatus;
    use stagetime_core::view::TaskView;

    fn task(name: &str, stage: u32, status: TaskStatus, can_fail: bool) -> TaskView {
        TaskView {
            name: name.into(),
            stage: Some(stage),
            can_fail,
            retries: 0,
            needs: vec![],
            status,
            attempt: u32::from(!matches!(
                status,
                TaskStatus::Waiting | TaskStatus::Ready | TaskStatus::Skipped
            )),
            message: None,
            lost: 0,
            lost_reason: None,
            timing: Default::default(),
        }
    }

    fn view(state: RunState, tasks: Vec<TaskView>) -> RunView {
        RunView::assemble(
            RunView {
                id: stagetime_core::RunId::new("r1").unwrap(),
                repo: "app".into(),
                commit: "abc".into(),
                branch: None,
                author: None,
                concurrency_group: None,
                state,
                version: 3,
                created_ms: 1_000,
                updated_ms: 64_000,
                finished_ms: state.is_finished().then_some(64_000),
                stages: vec![],
                tasks: vec![],
            },
            tasks,
        )
    }

    #[test]
    fn the_aggregate_counts_allowed_failures_as_success() {
        use TaskStatus as S;
        let v = view(
            RunState::Succeeded,
            vec![
                task("build", 0, S::Succeeded, false),
                task("lint", 0, S::Failed, true),
                task("test", 1, S::Succeeded, false),
            ],
        );
        let s = statuses(
            &v,
            &ReportSettings {
                per_stage: true,
                ..ReportSettings::default()
            },
        );
        assert_eq!(s[0].context, "stagetime");
        assert_eq!(s[0].state, ForgeState::Success);
        assert_eq!(
            s[0].description,
            "succeeded in 1m 3s · 3 tasks · 1 allowed failure"
        );
        let contexts: Vec<&str> = s.iter().map(|s| s.context.as_str()).collect();
        assert_eq!(
            contexts,
            ["stagetime", "stagetime/stage-0", "stagetime/stage-1"]
        );
        assert_eq!(
            s[1].state,
            ForgeState::Success,
            "stage 0 with an allowed failure"
        );
    }

    #[test]
    fn descriptions_read_at_a_glance() {
        use TaskStatus as S;
        let mut retried = task("test", 1, S::Running, false);
        retried.attempt = 2;
        let running = view(
            RunState::Running,
            vec![
                task("build", 0, S::Succeeded, false),
                task("lint", 0, S::Succeeded, false),
                retried,
                task("deploy", 2, S::Waiting, false),
            ],
        );
        assert_eq!(describe(&running), "stage 2/3 · 2/4 tasks · 1 retry");
        let failed = view(
            RunState::Failed,
            vec![
                task("build", 0, S::Succeeded, false),
                task("test", 1, S::Failed, false),
                task("deploy", 2, S::Skipped, false),
            ],
        );
        assert_eq!(describe(&failed), "failed: test (stage 2/3)");
        let s = statuses(
            &failed,
            &ReportSettings {
                per_stage: true,
                ..ReportSettings::default()
            },
        );
        assert_eq!(s[0].state, ForgeState::Failure);
        assert_eq!(
            s[3].state,
            ForgeState::Failure,
            "a skipped stage of a failed run"
        );
        let cancelled = view(
            RunState::Cancelled,
            vec![
                task("build", 0, S::Succeeded, false),
                task("test", 1, S::Cancelled, false),
            ],
        );
        assert_eq!(describe(&cancelled), "cancelled at stage 2/2");
        let queued = view(RunState::Queued, vec![task("a", 0, S::Waiting, false)]);
        assert_eq!(describe(&queued), "queued · 1 task");
    }

    #[test]
    fn descriptions_are_bounded() {
        let long = "x".repeat(500);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), MAX_DESCRIPTION);
        assert!(s.ends_with('…'));
        assert_eq!(shorten("invalid:\n  - a: b\n"), "invalid: - a: b");
        let e = error_status(
            "tasks[0].can_fial: unknown field, expected one of name, command, ...",
            &ReportSettings::default(),
        );
        assert_eq!(e.state, ForgeState::Error);
        assert!(e.description.starts_with("tasks[0].can_fial"));
    }

    #[test]
    fn request_bodies_follow_each_forge() {
        let status = Status {
            context: "stagetime".into(),
            state: ForgeState::Running,
            description: "stage 1/2 · 0/3 tasks".into(),
        };
        let url = Some("https://ci.example.com/runs/r1");
        let hub = Target {
            provider: Provider::Github,
            repository: "Codertocat/Hello-World".into(),
            project_id: None,
            commit: "abc".into(),
        };
        let (path, body) = status_request(&hub, &status, url);
        assert_eq!(path, "/repos/Codertocat/Hello-World/statuses/abc");
        assert_eq!(
            body,
            serde_json::json!({"state": "pending", "context": "stagetime",
                "description": "stage 1/2 · 0/3 tasks", "target_url": "https://ci.example.com/runs/r1"})
        );
        let lab = Target {
            provider: Provider::Gitlab,
            repository: "mike/diaspora".into(),
            project_id: Some(15),
            commit: "abc".into(),
        };
        let (path, body) = status_request(&lab, &status, None);
        assert_eq!(path, "/projects/15/statuses/abc");
        assert_eq!(
            body,
            serde_json::json!({"state": "running", "name": "stagetime",
                "description": "stage 1/2 · 0/3 tasks"})
        );
        let cancelled = Status {
            state: ForgeState::Cancelled,
            ..status.clone()
        };
        assert_eq!(
            status_request(&lab, &cancelled, None).1["state"],
            "canceled"
        );
        let tea = Target {
            provider: Provider::Gitea,
            ..hub
        };
        assert_eq!(status_request(&tea, &cancelled, None).1["state"], "error");
    }

    #[test]
    fn check_runs_are_created_then_updated_with_a_bounded_summary() {
        use TaskStatus as S;
        let target = Target {
            provider: Provider::Github,
            repository: "Codertocat/Hello-World".into(),
            project_id: None,
            commit: "abc".into(),
        };
        let v = view(
            RunState::Failed,
            vec![
                task("build", 0, S::Succeeded, false),
                task("test", 1, S::Failed, false),
            ],
        );
        let status = &statuses(&v, &ReportSettings::default())[0];
        let summary = check_summary(&v, Some("https://ci/runs/r1"), 64_000);
        assert!(
            summary.starts_with("**failed** · failed: test (stage 2/2)"),
            "{summary}"
        );
        assert!(
            summary.contains("| stage 1 | `test` | ❌ failed | 1 |"),
            "{summary}"
        );
        let (patch, path, body) = check_run_request(
            &target,
            None,
            "r1",
            status,
            &summary,
            Some("https://ci/runs/r1"),
            "2026-01-01T00:00:00Z",
        );
        assert!(!patch);
        assert_eq!(path, "/repos/Codertocat/Hello-World/check-runs");
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "completed_at",
                "conclusion",
                "details_url",
                "external_id",
                "head_sha",
                "name",
                "output",
                "status"
            ]
        );
        assert_eq!(
            (body["status"].as_str(), body["conclusion"].as_str()),
            (Some("completed"), Some("failure"))
        );
        let (patch, path, body) =
            check_run_request(&target, Some(42), "r1", status, &summary, None, "t");
        assert!(patch && path.ends_with("/check-runs/42"));
        assert!(body.get("head_sha").is_none() && body.get("name").is_none());
        let many: Vec<TaskView> = (0..3000)
            .map(|i| {
                task(
                    &format!("task-with-a-long-name-{i:05}"),
                    0,
                    S::Succeeded,
                    false,
                )
            })
            .collect();
        let big = check_summary(&view(RunState::Succeeded, many), None, 0);
        assert_eq!(big.chars().count(), MAX_CHECK_SUMMARY);
        assert!(big.ends_with("see the run's page for every task)"));
        // queued -> in_progress is a transition for a check run.
        let prev = sent(ForgeState::Pending, "queued", 0);
        let d = due_check(&st(ForgeState::Running, "stage 1/1"), &prev, 1, 5_000);
        assert_eq!(d.send.len(), 1);
    }

    fn st(state: ForgeState, d: &str) -> Status {
        Status {
            context: "stagetime".into(),
            state,
            description: d.into(),
        }
    }

    fn sent(state: ForgeState, d: &str, at_ms: u64) -> BTreeMap<String, Sent> {
        BTreeMap::from([(
            "stagetime".to_string(),
            Sent {
                state,
                description: d.into(),
                at_ms,
            },
        )])
    }

    #[test]
    fn transitions_go_at_once_descriptions_are_coalesced() {
        use ForgeState as F;
        let none = BTreeMap::new();
        // First report of a finished run: pending, then the final state.
        let d = due(Provider::Github, &[st(F::Success, "ok")], &none, 0, 5_000);
        let states: Vec<F> = d.send.iter().map(|s| s.state).collect();
        assert_eq!(states, [F::Pending, F::Success]);
        // First sight of a running run: GitHub shows it as pending (one
        // call); GitLab has the state (pending, then running).
        let running = [st(F::Running, "stage 1/1")];
        assert_eq!(
            due(Provider::Github, &running, &none, 0, 5_000).send.len(),
            1
        );
        let d = due(Provider::Gitlab, &running, &none, 0, 5_000);
        let states: Vec<&str> = d
            .send
            .iter()
            .map(|s| s.state.wire(Provider::Gitlab))
            .collect();
        assert_eq!(states, ["pending", "running"]);
        // Queued, then running on GitHub: a description change only.
        let prev = sent(F::Pending, "queued", 0);
        let d = due(Provider::Github, &running, &prev, 1_000, 5_000);
        assert!(d.send.is_empty() && d.held);
        assert!(!all_sent(Provider::Gitlab, &running, &prev));
        assert!(all_sent(Provider::Github, &running, &prev));
        // A missing file: error only.
        let d = due(
            Provider::Github,
            &[st(F::Error, "missing")],
            &none,
            0,
            5_000,
        );
        assert_eq!(d.send.len(), 1);
        // Same state, new description: held within the window, sent after it.
        let prev = sent(F::Running, "stage 1/2", 10_000);
        let want = [st(F::Running, "stage 2/2")];
        let d = due(Provider::Github, &want, &prev, 12_000, 5_000);
        assert!(d.send.is_empty() && d.held);
        let d = due(Provider::Github, &want, &prev, 15_000, 5_000);
        assert_eq!(d.send, want.to_vec());
        // GitLab refuses the same state twice: never a description-only update.
        let d = due(Provider::Gitlab, &want, &prev, 60_000, 5_000);
        assert!(d.send.is_empty() && !d.held);
        // A state change is never held.
        let d = due(
            Provider::Github,
            &[st(F::Failure, "failed: a")],
            &prev,
            10_001,
            5_000,
        );
        assert_eq!(d.send.len(), 1);
        // Nothing new: nothing sent.
        let d = due(
            Provider::Github,
            &[st(F::Running, "stage 1/2")],
            &prev,
            99_000,
            5_000,
        );
        assert!(d.send.is_empty() && !d.held);
    }
}

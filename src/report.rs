//! What the CLI shows of plans and runs, as pure functions from data to text:
//! the plan table, the dependency graph (DOT or Mermaid, with task statuses
//! when a run is given), the per-stage summary of a run, and the view of a
//! run ([`RunView`], from an embedded store or from the server).
//!
//! ```
//! use stagetime::plan::Plan;
//! use stagetime::report::{GraphFormat, graph};
//!
//! let spec = yaml_serde::from_str(
//!     "repo: demo\ncommit: abc1\ntasks:\n  - {name: build, command: make}\n  - {name: test, stage: 1, command: make test}\n",
//! )
//! .unwrap();
//! let plan = Plan::build(spec).unwrap();
//! let dot = graph(&plan, GraphFormat::Dot, None);
//! assert!(dot.contains("\"build\" -> \"stage 0 done\""));
//! assert!(dot.contains("\"stage 0 done\" -> \"test\""));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use stagetime_core::plan::{Plan, PlannedTask, TaskIndex};
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::store::RunSummary;
pub use stagetime_core::view::{RunView, TaskView};

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn fmt_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// An age as `kubectl get` shows it, one unit: `42s`, `5m`, `3h`, `12d`.
pub fn fmt_age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A time (ms since the epoch) in RFC 3339, UTC, with milliseconds:
/// `2026-11-30T21:06:44.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The names of the time fields (ms since the epoch) of runs, tasks and
/// attempts, and the RFC 3339 field [`add_rfc3339`] puts beside each.
pub const TIME_FIELDS: [(&str, &str); 5] = [
    ("created_ms", "created"),
    ("updated_ms", "updated"),
    ("finished_ms", "finished"),
    ("first_launch_ms", "first_launch"),
    ("launch_ms", "launch"),
];

/// Beside every time field of [`TIME_FIELDS`] in `value` (at any depth),
/// the same time in RFC 3339 (`"created": "2026-11-30T21:06:44.123Z"`
/// beside `"created_ms": 1796…`): machine output for people and for tools
/// that read dates, keeping the milliseconds for the rest.
pub fn add_rfc3339(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let mut found = Vec::new();
            for (field, name) in TIME_FIELDS {
                if let Some(ms) = map.get(field).and_then(serde_json::Value::as_u64) {
                    found.push((name, rfc3339(ms)));
                }
            }
            for v in map.values_mut() {
                add_rfc3339(v);
            }
            for (name, text) in found {
                map.insert(name.to_string(), serde_json::Value::String(text));
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(add_rfc3339),
        _ => {}
    }
}

/// How text output looks: with ANSI colours (states: green succeeded, red
/// failed, ...) or plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// Colour the states.
    pub colour: bool,
}

impl Style {
    /// Plain text.
    pub const PLAIN: Style = Style { colour: false };

    /// Colours when the output is a terminal and `NO_COLOR` is unset or
    /// empty (<https://no-color.org>): pass `std::io::stdout().is_terminal()`
    /// and `std::env::var_os("NO_COLOR")`.
    pub fn detect(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> Style {
        Style {
            colour: is_terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }

    /// `text` (a state or status name, possibly padded) in the colour of
    /// the state it names.
    pub fn state(self, text: &str) -> String {
        let code = match text.trim() {
            "succeeded" => "32",
            "failed" | "timed_out" => "31",
            "running" | "backoff" => "34",
            "queued" | "ready" => "33",
            "cancelled" | "skipped" => "2",
            _ => return text.to_string(),
        };
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The progress line of a task that changed (`None` while it is only
/// waiting or ready: those are not news).
pub fn progress_line(t: &TaskView) -> Option<String> {
    if matches!(t.status, TaskStatus::Waiting | TaskStatus::Ready) {
        return None;
    }
    let stage = t
        .stage
        .map(|s| format!("stage {s}"))
        .unwrap_or_else(|| "finally".into());
    let mut line = format!("{stage:>9}  {:<24} {}", t.name, t.status.as_str());
    if t.lost > 0 {
        line.push_str(&format!(
            " (attempt {}, {} lost with the worker and retried)",
            t.attempt, t.lost
        ));
    } else if t.attempt > 1 || t.status == TaskStatus::Backoff {
        line.push_str(&format!(" (attempt {})", t.attempt));
    }
    if let Some(m) = &t.message
        && !matches!(t.status, TaskStatus::Succeeded | TaskStatus::Running)
    {
        line.push_str(&format!(": {m}"));
    }
    Some(line)
}

/// The headline of a run: `run ID succeeded in 12.3s`, `run ID running
/// for 8.0s`, `run ID queued for 45s (no worker has started it)`; times
/// measured to `now_ms` while it is not over.
pub fn headline(run: &RunView, now_ms: u64, style: Style) -> String {
    let state = style.state(run.state.as_str());
    let took = fmt_ms(run.duration_ms(now_ms));
    let rerun = match run.round() {
        0 => String::new(),
        n => format!(" (rerun {n})"),
    };
    if run.state.is_finished() {
        return format!("run {} {state} in {took}{rerun}", run.id);
    }
    match (run.started_ms(), run.queue_ms(now_ms)) {
        (None, Some(q)) => format!(
            "run {} {state} for {} (no worker has started it yet)",
            run.id,
            fmt_ms(q)
        ),
        _ => format!("run {} {state} for {took}{rerun}", run.id),
    }
}

/// The summary of a run: its headline, each stage with its tasks (status,
/// duration, attempts), then the logs (handles) of failed tasks. Times are
/// measured to `now_ms` while the run is not over.
pub fn summary(run: &RunView, now_ms: u64, style: Style) -> String {
    let mut out = format!("\n{}\n", headline(run, now_ms, style));
    let mut failed_logs = Vec::new();
    for stage in &run.stages {
        out.push_str(&format!("{}\n", stage.label()));
        for t in run.tasks_of(stage) {
            out.push_str(&task_line(t, now_ms, style));
            if matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut)
                && let Some(log) = &t.timing.handle
            {
                failed_logs.push(format!("  {}: {log}", t.name));
            }
        }
    }
    if !failed_logs.is_empty() {
        out.push_str("logs of failed tasks:\n");
        for l in failed_logs {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn task_line(t: &TaskView, now_ms: u64, style: Style) -> String {
    let duration = t
        .duration_ms(now_ms)
        .map_or_else(|| "-".to_string(), fmt_ms);
    let can_fail = if t.can_fail { " (can fail)" } else { "" };
    format!(
        "  {:<24} {} {:>8}  attempts {}{can_fail}\n",
        t.name,
        style.state(&format!("{:<10}", t.status.as_str())),
        duration,
        t.attempt
    )
}

/// Everything about a run (`stagetime status` / `describe`): repository,
/// commit and branch; when it was submitted, started (and how long it was
/// queued) and ended, and its duration; each stage with its tasks, and
/// under each task every attempt: when, how long, how it ended and why, and
/// its handle (PipelineRun name or log file). Times are measured to
/// `now_ms` while the run is not over.
pub fn describe(run: &RunView, now_ms: u64, style: Style) -> String {
    let mut out = format!("{}\n", headline(run, now_ms, style));
    let mut field = |name: &str, value: String| out.push_str(&format!("  {name:<11}{value}\n"));
    field("repo", run.repo.clone());
    field("commit", run.commit.clone());
    if let Some(b) = &run.branch {
        field("branch", b.clone());
    }
    if let Some(a) = &run.author {
        field("author", a.clone());
    }
    if let Some(g) = &run.concurrency_group {
        field("group", g.clone());
    }
    field(
        "submitted",
        format!(
            "{} ({} ago)",
            rfc3339(run.created_ms),
            fmt_age(now_ms.saturating_sub(run.created_ms))
        ),
    );
    match (run.started_ms(), run.queue_ms(now_ms)) {
        (Some(start), Some(q)) => field(
            "started",
            format!("{} (queued {})", rfc3339(start), fmt_ms(q)),
        ),
        (Some(start), None) => field(
            "started",
            format!("{} (rerun {})", rfc3339(start), run.round()),
        ),
        (None, Some(q)) if !run.state.is_finished() => field(
            "started",
            format!("not yet: queued for {} (is a worker running?)", fmt_ms(q)),
        ),
        (None, _) => field("started", "never".into()),
    }
    if let Some(end) = run.finished_ms {
        field("ended", rfc3339(end));
    }
    field("duration", fmt_ms(run.duration_ms(now_ms)));
    for stage in &run.stages {
        out.push_str(&format!(
            "{}  {}\n",
            stage.label(),
            style.state(stage.phase.as_str())
        ));
        for t in run.tasks_of(stage) {
            out.push_str(&task_line(t, now_ms, style));
            if let Some(m) = &t.message
                && t.status != TaskStatus::Succeeded
            {
                out.push_str(&format!("      reason: {m}\n"));
            }
            for a in &t.timing.attempts {
                let how = a
                    .status
                    .map_or_else(|| "running".to_string(), |s| attempt_result(s).to_string());
                let rerun = if a.round > 0 {
                    format!(" (rerun {})", a.round)
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "      attempt {}{rerun}: {} {} {}",
                    a.number,
                    rfc3339(a.launch_ms),
                    fmt_ms(a.duration_ms(now_ms)),
                    style.state(&how)
                ));
                if let Some(m) = &a.message {
                    out.push_str(&format!(": {m}"));
                }
                if let Some(h) = &a.handle {
                    out.push_str(&format!(" [{h}]"));
                }
                out.push('\n');
            }
        }
    }
    out
}

/// How an attempt ended, from the task's status right after it.
fn attempt_result(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Backoff => "failed",
        other => other.as_str(),
    }
}

/// What `watch` and `submit --wait` say when `run` is still queued — no
/// worker has started any task of it — `after` or longer after it was
/// submitted; `None` otherwise.
pub fn queued_too_long(run: &RunView, now_ms: u64, after: std::time::Duration) -> Option<String> {
    let queued = run.queue_ms(now_ms)?;
    let started = run.started_ms().is_some();
    if started || run.state.is_finished() || u128::from(queued) < after.as_millis() {
        return None;
    }
    Some(format!(
        "run {} has been queued for {} and no worker has started it: is a worker running on the server's Redis (same --redis-url and --redis-prefix)? A server started with --memory has no workers.",
        run.id,
        fmt_ms(queued)
    ))
}

/// The run list of `stagetime list`: id, state, repository, commit, age
/// (since submission) and duration (to the end, or to `now_ms` while not
/// over), newest first as given.
pub fn run_table(runs: &[RunSummary], now_ms: u64, style: Style) -> String {
    let mut out = format!(
        "{:<40} {:<10} {:<20} {:<12} {:>5} {:>8}\n",
        "ID", "STATE", "REPO", "COMMIT", "AGE", "DURATION"
    );
    for r in runs {
        let commit: String = r.commit.chars().take(12).collect();
        let duration = r.finished_ms.unwrap_or(now_ms).saturating_sub(r.created_ms);
        out.push_str(&format!(
            "{:<40} {} {:<20} {commit:<12} {:>5} {:>8}\n",
            r.id,
            style.state(&format!("{:<10}", r.state.as_str())),
            r.repo,
            fmt_age(now_ms.saturating_sub(r.created_ms)),
            fmt_ms(duration)
        ));
    }
    out
}

/// The plan as a table: stage, task, needs, can-fail, retries, timeout and
/// what runs (command or pipeline).
pub fn plan_table(plan: &Plan) -> String {
    let mut out = format!(
        "{:<8} {:<24} {:<20} {:<8} {:<7} {:<8} TARGET\n",
        "STAGE", "TASK", "NEEDS", "CANFAIL", "RETRIES", "TIMEOUT"
    );
    let mut order: Vec<&PlannedTask> = plan.tasks.iter().collect();
    order.sort_by_key(|t| (t.is_finally, t.stage));
    for t in order {
        let stage = t
            .stage
            .map(|s| s.to_string())
            .unwrap_or_else(|| "finally".into());
        let needs = match &t.spec.needs {
            Some(n) if n.is_empty() => "(none)".into(),
            Some(n) => n.join(","),
            None => "-".into(),
        };
        let timeout = t
            .timeout
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|| "-".into());
        let target = match (&t.spec.command, &t.spec.pipeline) {
            (Some(c), _) => format!("sh -c {c:?}"),
            (None, Some(p)) => match (&p.pipeline_ref, &p.resolver) {
                (Some(r), _) => format!("pipeline {r}"),
                (None, Some(r)) => format!("pipeline via {r} resolver"),
                _ => "pipeline".into(),
            },
            (None, None) => "-".into(),
        };
        out.push_str(&format!(
            "{stage:<8} {:<24} {needs:<20} {:<8} {:<7} {timeout:<8} {target}\n",
            t.name(),
            t.spec.can_fail,
            t.spec.retries
        ));
    }
    out
}

/// The notation of [`graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphFormat {
    /// Graphviz DOT.
    #[default]
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

impl FromStr for GraphFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "dot" => Ok(GraphFormat::Dot),
            "mermaid" => Ok(GraphFormat::Mermaid),
            other => Err(format!(
                "graph format {other:?} is not one of \"dot\", \"mermaid\""
            )),
        }
    }
}

impl fmt::Display for GraphFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GraphFormat::Dot => "dot",
            GraphFormat::Mermaid => "mermaid",
        })
    }
}

/// The fill colour of a status in a graph (`None`: not coloured).
fn status_colour(s: TaskStatus) -> Option<&'static str> {
    match s {
        TaskStatus::Waiting | TaskStatus::Ready => None,
        TaskStatus::Running | TaskStatus::Backoff => Some("#9ecae1"),
        TaskStatus::Succeeded => Some("#a1d99b"),
        TaskStatus::Failed | TaskStatus::TimedOut => Some("#fc9272"),
        TaskStatus::Cancelled | TaskStatus::Skipped => Some("#d9d9d9"),
    }
}

/// A node of the drawn graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GraphNode {
    /// A task of the plan.
    Task(TaskIndex),
    /// The barrier after stage group `g`: every task of the group is done.
    StageDone(u32),
    /// Every main task is done: what the finally tasks wait for.
    StagesDone,
}

/// The edges of [`graph`], linear in tasks + `needs` as in the plan itself:
/// each stage barrier is one node, with an edge in from every task of its
/// stage and an edge out to every task of the next stage that has no
/// `needs`; explicit `needs` are drawn directly; the finally tasks without
/// `needs` follow one last node that the main tasks nothing else waits for
/// lead into (every main task is done before it, transitively).
fn graph_edges(plan: &Plan) -> Vec<(GraphNode, GraphNode)> {
    use GraphNode::{StageDone, StagesDone, Task};
    // A barrier nothing is gated by (the last stage's, or one whose next
    // stage only has tasks with `needs`) is not drawn.
    let barrier_drawn = |g: u32| !plan.barrier_dependents(g).is_empty();
    let mut edges = Vec::new();
    for (g, stage) in (0..).zip(&plan.stages) {
        if barrier_drawn(g) {
            edges.extend(stage.members.iter().map(|&m| (Task(m), StageDone(g))));
            edges.extend(
                plan.barrier_dependents(g)
                    .iter()
                    .map(|&d| (StageDone(g), Task(d))),
            );
        }
    }
    for i in 0..plan.len() as TaskIndex {
        edges.extend(plan.needs_of(i).iter().map(|&d| (Task(d), Task(i))));
    }
    if plan.len() > plan.main_count as usize {
        for i in 0..plan.main_count {
            let waited_for = !plan.dependents_of(i).is_empty()
                || plan.stage_group_of(i).is_some_and(barrier_drawn);
            if !waited_for {
                edges.push((Task(i), StagesDone));
            }
        }
        for i in plan.main_count..plan.len() as TaskIndex {
            if plan.needs_of(i).is_empty() {
                edges.push((StagesDone, Task(i)));
            }
        }
    }
    edges
}

/// The dependency graph of `plan`, readable for wide stages: one cluster per
/// stage and one (dashed) for the finally tasks; between consecutive stages
/// one barrier node ("stage N done") instead of an edge from every task to
/// every task; explicit `needs` as direct edges; a last barrier ("all stages
/// done") before the finally tasks. Tasks that may fail are drawn dashed and
/// labelled "(can fail)". With `run` (a run of this plan), each task is
/// labelled and coloured with its status.
pub fn graph(plan: &Plan, format: GraphFormat, run: Option<&RunView>) -> String {
    let statuses: HashMap<&str, TaskStatus> = run
        .map(|r| {
            r.tasks
                .iter()
                .map(|t| (t.name.as_str(), t.status))
                .collect()
        })
        .unwrap_or_default();
    let edges = graph_edges(plan);
    let mut barriers: Vec<GraphNode> = Vec::new();
    for (a, b) in &edges {
        for n in [*a, *b] {
            if !matches!(n, GraphNode::Task(_)) && !barriers.contains(&n) {
                barriers.push(n);
            }
        }
    }
    let finally: Vec<TaskIndex> = (plan.main_count..plan.len() as TaskIndex).collect();
    let clusters = plan
        .stages
        .iter()
        .map(|stage| (format!("stage {}", stage.number), stage.members.clone()))
        .chain((!finally.is_empty()).then(|| ("finally".to_string(), finally)));
    // Name, then "(can fail)", then the status; lines split by `\n`.
    let label = |i: TaskIndex| {
        let task = plan.task(i);
        let mut label = task.name().to_string();
        if task.spec.can_fail {
            label.push_str("\\n(can fail)");
        }
        if let Some(&s) = statuses.get(task.name()) {
            label.push_str(&format!("\\n{}", s.as_str()));
        }
        label
    };
    let barrier_title = |n: GraphNode| match n {
        GraphNode::StageDone(g) => format!("stage {} done", plan.stages[g as usize].number),
        _ => "all stages done".to_string(),
    };
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            // Task names are DNS-1123 labels: a barrier's title, with its
            // spaces, never names a task.
            let id = |n: GraphNode| match n {
                GraphNode::Task(i) => format!("\"{}\"", plan.task(i).name()),
                barrier => format!("\"{}\"", barrier_title(barrier)),
            };
            out.push_str("digraph revision_run {\n  rankdir=LR;\n");
            for (g, (title, members)) in clusters.enumerate() {
                let style = if title == "finally" {
                    "    style=dashed;\n"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "  subgraph cluster_{g} {{\n    label=\"{title}\";\n{style}"
                ));
                for m in members {
                    let task = plan.task(m);
                    out.push_str(&format!("    {}", id(GraphNode::Task(m))));
                    let status = statuses.get(task.name());
                    let mut attrs = Vec::new();
                    if status.is_some() || task.spec.can_fail {
                        attrs.push(format!("label=\"{}\"", label(m)));
                    }
                    let colour = status.and_then(|&s| status_colour(s));
                    match (colour, task.spec.can_fail) {
                        (Some(c), true) => {
                            attrs.push(format!("style=\"filled,dashed\", fillcolor=\"{c}\""))
                        }
                        (Some(c), false) => attrs.push(format!("style=filled, fillcolor=\"{c}\"")),
                        (None, true) => attrs.push("style=dashed".into()),
                        (None, false) => {}
                    }
                    if !attrs.is_empty() {
                        out.push_str(&format!(" [{}]", attrs.join(", ")));
                    }
                    out.push_str(";\n");
                }
                out.push_str("  }\n");
            }
            // A barrier is a join bar, as in activity diagrams.
            for b in &barriers {
                out.push_str(&format!(
                    "  {} [shape=box, label=\"\", xlabel=\"{}\", width=0.08, height=0.8, style=filled, fillcolor=black];\n",
                    id(*b),
                    barrier_title(*b)
                ));
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {} -> {};\n", id(*a), id(*b)));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            // Task ids are lower case (DNS-1123): barrier ids are not.
            let id = |n: GraphNode| match n {
                GraphNode::Task(i) => mermaid_id(plan.task(i).name()),
                GraphNode::StageDone(g) => {
                    format!("Stage{}Done", plan.stages[g as usize].number)
                }
                GraphNode::StagesDone => "AllStagesDone".to_string(),
            };
            out.push_str("flowchart LR\n");
            let mut finally_group = None;
            for (g, (title, members)) in clusters.enumerate() {
                if title == "finally" {
                    finally_group = Some(g);
                }
                out.push_str(&format!("  subgraph group{g}[\"{title}\"]\n"));
                for m in members {
                    out.push_str(&format!(
                        "    {}[\"{}\"]\n",
                        id(GraphNode::Task(m)),
                        label(m).replace("\\n", "<br/>")
                    ));
                }
                out.push_str("  end\n");
            }
            for b in &barriers {
                out.push_str(&format!("  {}{{{{\"{}\"}}}}\n", id(*b), barrier_title(*b)));
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {} --> {}\n", id(*a), id(*b)));
            }
            if let Some(g) = finally_group {
                out.push_str(&format!("  style group{g} stroke-dasharray:5 5\n"));
            }
            for (i, task) in (0..).zip(&plan.tasks) {
                let mut style = Vec::new();
                if let Some(c) = statuses.get(task.name()).and_then(|&s| status_colour(s)) {
                    style.push(format!("fill:{c}"));
                }
                if task.spec.can_fail {
                    style.push("stroke-dasharray:5 5".to_string());
                }
                if !style.is_empty() {
                    out.push_str(&format!(
                        "  style {} {}\n",
                        id(GraphNode::Task(i)),
                        style.join(",")
                    ));
                }
            }
        }
    }
    out
}

/// A Mermaid node id for a task name (DNS-1123 names: `-` is the only
/// character Mermaid ids do not take).
fn mermaid_id(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let spec = yaml_serde::from_str(
            "repo: demo\ncommit: abc1\ntasks:\n  - {name: build, command: make}\n  - {name: unit-test, stage: 1, command: make test}\n  - {name: lint, stage: 1, can_fail: true, command: make lint}\nfinally:\n  - {name: notify, command: 'true'}\n",
        )
        .unwrap();
        Plan::build(spec).unwrap()
    }

    fn view(statuses: &[(&str, TaskStatus)]) -> RunView {
        let header = RunView {
            id: stagetime_core::RunId::new("r1").unwrap(),
            repo: "demo".into(),
            commit: "abc1".into(),
            branch: None,
            author: None,
            concurrency_group: None,
            state: stagetime_core::RunState::Failed,
            version: 7,
            created_ms: 1_000,
            updated_ms: 4_000,
            finished_ms: Some(4_500),
            stages: vec![],
            tasks: vec![],
        };
        let tasks = statuses
            .iter()
            .map(|&(name, status)| TaskView {
                name: name.into(),
                stage: (name != "notify").then_some(u32::from(name != "build")),
                can_fail: name == "lint",
                retries: 0,
                needs: vec![],
                status,
                attempt: 1,
                message: None,
                lost: 0,
                lost_reason: None,
                timing: stagetime_core::store::TaskTiming {
                    first_launch_ms: Some(1_000),
                    launch_ms: Some(1_000),
                    finished_ms: Some(2_250),
                    handle: Some(format!("/logs/{name}.log")),
                    attempts: vec![],
                },
            })
            .collect();
        RunView::assemble(header, tasks)
    }

    /// Stages of `sizes[s]` tasks `s<s>-t<n>` (stage `s`), and `finally`
    /// tasks `f<n>` each needing the one before.
    fn wide_plan(sizes: &[usize], finally: usize) -> Plan {
        let mut doc = String::from("repo: demo\ncommit: abc1\ntasks:\n");
        for (s, &n) in sizes.iter().enumerate() {
            for t in 0..n {
                doc.push_str(&format!(
                    "  - {{name: s{s}-t{t}, stage: {s}, command: 'true'}}\n"
                ));
            }
        }
        if finally > 0 {
            doc.push_str("finally:\n  - {name: f0, command: 'true'}\n");
            for f in 1..finally {
                doc.push_str(&format!(
                    "  - {{name: f{f}, needs: [f{}], command: 'true'}}\n",
                    f - 1
                ));
            }
        }
        Plan::build(yaml_serde::from_str(&doc).unwrap()).unwrap()
    }

    fn dot_edges(dot: &str) -> Vec<&str> {
        dot.lines().filter(|l| l.contains(" -> ")).collect()
    }

    #[test]
    fn dot_graph_has_stage_clusters_finally_and_edges() {
        let dot = graph(&plan(), GraphFormat::Dot, None);
        assert!(
            dot.contains("  subgraph cluster_0 {\n    label=\"stage 0\";"),
            "{dot}"
        );
        assert!(
            dot.contains("label=\"finally\";\n    style=dashed;"),
            "{dot}"
        );
        assert_eq!(
            dot_edges(&dot),
            [
                "  \"build\" -> \"stage 0 done\";",
                "  \"stage 0 done\" -> \"unit-test\";",
                "  \"stage 0 done\" -> \"lint\";",
                "  \"unit-test\" -> \"all stages done\";",
                "  \"lint\" -> \"all stages done\";",
                "  \"all stages done\" -> \"notify\";",
            ],
            "{dot}"
        );
        assert!(
            dot.contains("  \"stage 0 done\" [shape=box, label=\"\", xlabel=\"stage 0 done\""),
            "{dot}"
        );
        assert!(
            !dot.contains("fillcolor=\"#"),
            "no statuses without a run: {dot}"
        );
    }

    #[test]
    fn can_fail_tasks_are_dashed_and_labelled() {
        let dot = graph(&plan(), GraphFormat::Dot, None);
        assert!(
            dot.contains("    \"lint\" [label=\"lint\\n(can fail)\", style=dashed];\n"),
            "{dot}"
        );
        assert!(dot.contains("    \"unit-test\";\n"), "{dot}");
        let run = view(&[
            ("build", TaskStatus::Succeeded),
            ("unit-test", TaskStatus::Running),
            ("lint", TaskStatus::Failed),
            ("notify", TaskStatus::Waiting),
        ]);
        let dot = graph(&plan(), GraphFormat::Dot, Some(&run));
        assert!(
            dot.contains(
                "\"lint\" [label=\"lint\\n(can fail)\\nfailed\", style=\"filled,dashed\", fillcolor=\"#fc9272\"]"
            ),
            "{dot}"
        );
        let mermaid = graph(&plan(), GraphFormat::Mermaid, Some(&run));
        assert!(
            mermaid.contains("    lint[\"lint<br/>(can fail)<br/>failed\"]\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("  style lint fill:#fc9272,stroke-dasharray:5 5\n"),
            "{mermaid}"
        );
    }

    #[test]
    fn a_barrier_replaces_the_all_pairs_edges_between_stages() {
        // 4, 8 and 5 tasks in three stages, two finally tasks: 19 tasks.
        let plan = wide_plan(&[4, 8, 5], 2);
        assert_eq!(plan.len(), 19);
        let all_pairs: usize = (0..plan.len() as TaskIndex)
            .map(|i| plan.direct_dependencies(i).len())
            .sum();
        assert_eq!(all_pairs, 73, "every dependency drawn as its own edge");
        let dot = graph(&plan, GraphFormat::Dot, None);
        // 4 into and 8 out of the first barrier, 8 into and 5 out of the
        // second, 5 into and 1 out of the last, and f0 -> f1.
        assert_eq!(dot_edges(&dot).len(), 4 + 8 + 8 + 5 + 5 + 1 + 1, "{dot}");
        assert!(dot.contains("  \"s1-t7\" -> \"stage 1 done\";\n"), "{dot}");
        assert!(dot.contains("  \"stage 1 done\" -> \"s2-t0\";\n"), "{dot}");
        assert!(!dot.contains("\"s0-t0\" -> \"s1-t0\""), "{dot}");
        assert!(
            dot.contains("  \"s2-t4\" -> \"all stages done\";\n"),
            "{dot}"
        );
        assert!(dot.contains("  \"all stages done\" -> \"f0\";\n"), "{dot}");
        assert!(dot.contains("  \"f0\" -> \"f1\";\n"), "{dot}");
        assert!(!dot.contains("\"all stages done\" -> \"f1\""), "{dot}");
        let mermaid = graph(&plan, GraphFormat::Mermaid, None);
        assert_eq!(mermaid.matches(" --> ").count(), 32, "{mermaid}");
        assert!(
            mermaid.contains("  Stage0Done{{\"stage 0 done\"}}\n"),
            "{mermaid}"
        );
        assert!(mermaid.contains("  s0_t3 --> Stage0Done\n"), "{mermaid}");
        assert!(mermaid.contains("  Stage0Done --> s1_t0\n"), "{mermaid}");
        assert!(mermaid.contains("  AllStagesDone --> f0\n"), "{mermaid}");
        assert!(
            mermaid.contains("  subgraph group3[\"finally\"]\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("  style group3 stroke-dasharray:5 5\n"),
            "{mermaid}"
        );

        // Ten tasks per stage: 10 edges on each side of each barrier, not 100.
        let dot = graph(&wide_plan(&[10, 10, 10], 0), GraphFormat::Dot, None);
        assert_eq!(dot_edges(&dot).len(), 40, "{dot}");
        assert!(!dot.contains("all stages done"), "no finally: {dot}");
    }

    #[test]
    fn explicit_needs_are_drawn_directly_and_bypass_the_barrier() {
        let spec = yaml_serde::from_str(
            "repo: demo\ncommit: abc1\ntasks:\n  - {name: build, command: make}\n  - {name: docs, command: make docs}\n  - {name: test, stage: 1, needs: [build], command: make test}\n  - {name: e2e, stage: 2, command: make e2e}\nfinally:\n  - {name: notify, command: 'true'}\n",
        )
        .unwrap();
        let plan = Plan::build(spec).unwrap();
        let dot = graph(&plan, GraphFormat::Dot, None);
        assert_eq!(
            dot_edges(&dot),
            [
                // Nothing of stage 1 waits for stage 0 as a whole: no barrier.
                "  \"test\" -> \"stage 1 done\";",
                "  \"stage 1 done\" -> \"e2e\";",
                "  \"build\" -> \"test\";",
                // docs: nothing waits for it, but finally does.
                "  \"docs\" -> \"all stages done\";",
                "  \"e2e\" -> \"all stages done\";",
                "  \"all stages done\" -> \"notify\";",
            ],
            "{dot}"
        );
        assert!(!dot.contains("stage 0 done"), "{dot}");
    }

    #[test]
    fn graphs_with_a_run_show_each_status() {
        let run = view(&[
            ("build", TaskStatus::Succeeded),
            ("unit-test", TaskStatus::Failed),
            ("lint", TaskStatus::Running),
            ("notify", TaskStatus::Waiting),
        ]);
        let dot = graph(&plan(), GraphFormat::Dot, Some(&run));
        assert!(
            dot.contains(
                "\"unit-test\" [label=\"unit-test\\nfailed\", style=filled, fillcolor=\"#fc9272\"]"
            ),
            "{dot}"
        );
        assert!(
            dot.contains("\"notify\" [label=\"notify\\nwaiting\"];"),
            "{dot}"
        );
        let mermaid = graph(&plan(), GraphFormat::Mermaid, Some(&run));
        assert!(
            mermaid.contains("unit_test[\"unit-test<br/>failed\"]"),
            "{mermaid}"
        );
        assert!(mermaid.contains("  build --> Stage0Done\n"), "{mermaid}");
        assert!(
            mermaid.contains("  Stage0Done --> unit_test\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("  style build fill:#a1d99b\n"),
            "{mermaid}"
        );
        assert!(!mermaid.contains("style notify"), "{mermaid}");
        let styles: Vec<&str> = mermaid
            .lines()
            .filter(|l| l.starts_with("  style "))
            .collect();
        assert_eq!(
            styles,
            [
                "  style group2 stroke-dasharray:5 5",
                "  style build fill:#a1d99b",
                "  style unit_test fill:#fc9272",
                "  style lint fill:#9ecae1,stroke-dasharray:5 5",
            ],
            "in plan order: {mermaid}"
        );
    }

    #[test]
    fn summary_groups_by_stage_and_lists_logs_of_failed_tasks() {
        let run = view(&[
            ("build", TaskStatus::Succeeded),
            ("unit-test", TaskStatus::Failed),
            ("lint", TaskStatus::Skipped),
            ("notify", TaskStatus::Succeeded),
        ]);
        let text = summary(&run, 99_000, Style::PLAIN);
        assert!(text.contains("run r1 failed in 3.5s"), "{text}");
        let stage1 = text.find("stage 1").unwrap();
        let finally = text.find("finally").unwrap();
        assert!(
            text.find("stage 0").unwrap() < stage1 && stage1 < finally,
            "{text}"
        );
        assert!(text.contains("(can fail)"), "{text}");
        assert!(
            text.contains("logs of failed tasks:\n  unit-test: /logs/unit-test.log"),
            "{text}"
        );
        assert!(!text.contains("/logs/build.log"), "{text}");
    }

    /// Issue 14: `status` said "running in 7ms" for a run several seconds
    /// old: the time of its last change stood in for now.
    #[test]
    fn a_running_run_is_timed_to_now_not_to_its_last_change() {
        let mut run = view(&[("build", TaskStatus::Running)]);
        run.state = stagetime_core::RunState::Running;
        run.created_ms = 1_000;
        run.updated_ms = 1_007;
        run.finished_ms = None;
        run.tasks[0].timing.finished_ms = None;
        run.tasks[0].timing.attempts = vec![stagetime_core::store::AttemptTiming {
            number: 1,
            launch_ms: 1_000,
            ..Default::default()
        }];
        let text = summary(&run, 9_000, Style::PLAIN);
        assert!(text.contains("run r1 running for 8.0s"), "{text}");
        assert!(
            text.contains("build                    running        8.0s"),
            "{text}"
        );
        assert!(!text.contains("7ms"), "{text}");
    }

    fn attempts_view() -> RunView {
        use stagetime_core::store::AttemptTiming;
        let mut run = view(&[
            ("build", TaskStatus::Succeeded),
            ("unit-test", TaskStatus::Failed),
        ]);
        run.created_ms = 1_796_000_000_000;
        run.finished_ms = Some(1_796_000_090_000);
        let t = &mut run.tasks[1];
        t.message = Some("exited with status 1".into());
        t.timing.first_launch_ms = Some(1_796_000_002_000);
        t.timing.finished_ms = Some(1_796_000_090_000);
        t.attempt = 2;
        t.timing.attempts = vec![
            AttemptTiming {
                number: 1,
                round: 0,
                launch_ms: 1_796_000_002_000,
                finished_ms: Some(1_796_000_012_000),
                status: Some(TaskStatus::Backoff),
                message: Some("exited with status 2".into()),
                handle: Some("r1-unit-test-1".into()),
            },
            AttemptTiming {
                number: 2,
                round: 0,
                launch_ms: 1_796_000_080_000,
                finished_ms: Some(1_796_000_090_000),
                status: Some(TaskStatus::Failed),
                message: Some("exited with status 1".into()),
                handle: Some("r1-unit-test-2".into()),
            },
        ];
        run.tasks[0].timing.attempts = vec![AttemptTiming {
            number: 1,
            launch_ms: 1_796_000_001_500,
            finished_ms: Some(1_796_000_002_000),
            status: Some(TaskStatus::Succeeded),
            ..Default::default()
        }];
        run
    }

    #[test]
    fn describe_shows_times_queue_and_every_attempt_with_its_reason_and_handle() {
        let run = attempts_view();
        let text = describe(&run, 1_796_000_300_000, Style::PLAIN);
        for needle in [
            "run r1 failed in 1m30s\n",
            "  submitted  2026-11-30T00:53:20.000Z (5m ago)\n",
            "  started    2026-11-30T00:53:21.500Z (queued 1.5s)\n",
            "  ended      2026-11-30T00:54:50.000Z\n",
            "  duration   1m30s\n",
            "      reason: exited with status 1\n",
            "      attempt 1: 2026-11-30T00:53:22.000Z 10.0s failed: exited with status 2 [r1-unit-test-1]\n",
            "      attempt 2: 2026-11-30T00:54:40.000Z 10.0s failed: exited with status 1 [r1-unit-test-2]\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn json_times_get_rfc3339_twins_at_every_depth() {
        let mut value = serde_json::to_value(attempts_view()).unwrap();
        add_rfc3339(&mut value);
        assert_eq!(value["created_ms"], 1_796_000_000_000u64);
        assert_eq!(value["created"], "2026-11-30T00:53:20.000Z");
        assert_eq!(value["finished"], "2026-11-30T00:54:50.000Z");
        assert_eq!(
            value["tasks"][1]["first_launch"],
            "2026-11-30T00:53:22.000Z"
        );
        assert_eq!(
            value["tasks"][1]["attempts"][1]["finished"],
            "2026-11-30T00:54:50.000Z"
        );
        assert!(value.get("updated").is_some());
    }

    #[test]
    fn the_run_table_has_age_and_duration_columns() {
        let summary = |id: &str, state, created_ms, finished_ms| RunSummary {
            id: stagetime_core::RunId::new(id).unwrap(),
            repo: "demo".into(),
            commit: "0123456789abcdef".into(),
            state,
            created_ms,
            updated_ms: created_ms,
            finished_ms,
            concurrency_group: None,
        };
        use stagetime_core::RunState as S;
        let runs = [
            summary("new", S::Running, 3_590_000, None),
            summary("old", S::Succeeded, 0, Some(95_000)),
        ];
        let table = run_table(&runs, 3_600_000, Style::PLAIN);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("COMMIT         AGE DURATION"), "{table}");
        assert!(
            lines[1].starts_with("new ") && lines[1].contains("running    demo"),
            "{table}"
        );
        assert!(lines[1].contains("0123456789ab   10s    10.0s"), "{table}");
        assert!(lines[2].contains("60m    1m35s"), "{table}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(Style::detect(true, None).colour);
        assert!(
            Style::detect(true, Some("".into())).colour,
            "empty NO_COLOR counts as unset"
        );
        assert!(!Style::detect(true, Some("1".into())).colour);
        assert!(!Style::detect(false, None).colour);
        let colour = Style { colour: true };
        assert_eq!(colour.state("failed "), "\x1b[31mfailed \x1b[0m");
        assert_eq!(Style::PLAIN.state("failed"), "failed");
    }

    #[test]
    fn a_run_nobody_started_is_called_out_after_the_threshold() {
        let mut run = view(&[("build", TaskStatus::Waiting)]);
        run.state = stagetime_core::RunState::Queued;
        run.finished_ms = None;
        run.tasks[0].timing = Default::default();
        let after = std::time::Duration::from_secs(10);
        assert_eq!(queued_too_long(&run, 10_999, after), None);
        let note = queued_too_long(&run, 11_000, after).unwrap();
        assert!(
            note.contains("queued for 10.0s and no worker has started it"),
            "{note}"
        );
        assert!(headline(&run, 11_000, Style::PLAIN).contains("queued for 10.0s (no worker"));
    }

    #[test]
    fn durations_and_ages_read_well() {
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt_ms(245_000), "4m05s");
        assert_eq!(fmt_ms(7_380_000), "2h03m");
        assert_eq!(fmt_ms(273_600_000), "3d04h");
        assert_eq!(fmt_age(42_000), "42s");
        assert_eq!(fmt_age(300_000), "5m");
        assert_eq!(fmt_age(10_800_000), "3h");
        assert_eq!(fmt_age(1_036_800_000), "12d");
    }

    #[test]
    fn progress_lines_skip_waiting_tasks_and_name_retries() {
        let mut t = view(&[("build", TaskStatus::Waiting)]).tasks.remove(0);
        assert_eq!(progress_line(&t), None);
        t.status = TaskStatus::Backoff;
        t.attempt = 2;
        t.message = Some("exit status 1".into());
        assert_eq!(
            progress_line(&t).unwrap(),
            "  stage 0  build                    backoff (attempt 2): exit status 1"
        );
    }

    #[test]
    fn plan_table_lists_every_task_with_its_stage() {
        let table = plan_table(&plan());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[1].starts_with("0 "), "{table}");
        assert!(lines[4].starts_with("finally"), "{table}");
    }

    #[test]
    fn graph_format_parses_and_names_the_bad_value() {
        assert_eq!("mermaid".parse::<GraphFormat>(), Ok(GraphFormat::Mermaid));
        assert!(
            "svg"
                .parse::<GraphFormat>()
                .unwrap_err()
                .contains("\"svg\"")
        );
    }
}

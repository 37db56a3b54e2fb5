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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use stagetime_core::plan::{Plan, PlannedTask, TaskIndex};
use stagetime_core::scheduler::TaskStatus;
pub use stagetime_core::view::{RunView, TaskView};

/// A duration for people: `850ms`, `12.3s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
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

/// The summary of a run: its state and duration, each stage with its tasks
/// (status, duration, attempts), then the logs (handles) of failed tasks.
pub fn summary(run: &RunView) -> String {
    let mut out = String::new();
    let total = run
        .finished_ms
        .unwrap_or(run.updated_ms)
        .saturating_sub(run.created_ms);
    out.push_str(&format!(
        "\nrun {} {} in {}\n",
        run.id,
        run.state.as_str(),
        fmt_ms(total)
    ));
    // Stages in order, finally last.
    let mut groups: BTreeMap<(bool, u32), Vec<&TaskView>> = BTreeMap::new();
    for t in &run.tasks {
        groups
            .entry((t.stage.is_none(), t.stage.unwrap_or(0)))
            .or_default()
            .push(t);
    }
    let mut failed_logs = Vec::new();
    for ((is_finally, stage), members) in groups {
        out.push_str(&if is_finally {
            "finally\n".to_string()
        } else {
            format!("stage {stage}\n")
        });
        for t in members {
            let duration = match (t.timing.first_launch_ms, t.timing.finished_ms) {
                (Some(a), Some(b)) => fmt_ms(b.saturating_sub(a)),
                _ => "-".into(),
            };
            let can_fail = if t.can_fail { " (can fail)" } else { "" };
            out.push_str(&format!(
                "  {:<24} {:<10} {:>8}  attempts {}{can_fail}\n",
                t.name,
                t.status.as_str(),
                duration,
                t.attempt
            ));
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
        let text = summary(&run);
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

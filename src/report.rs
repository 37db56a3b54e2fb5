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
//! assert!(dot.contains("\"build\" -> \"test\""));
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
    if t.attempt > 1 || t.status == TaskStatus::Backoff {
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
            let duration = match (t.first_launch_ms, t.finished_ms) {
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
                && let Some(log) = &t.handle
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

/// The dependency graph of `plan`: one cluster per stage, finally tasks in a
/// dashed cluster, an edge per direct dependency. With `run` (a run of this
/// plan), each task is labelled and coloured with its status.
pub fn graph(plan: &Plan, format: GraphFormat, run: Option<&RunView>) -> String {
    let statuses: HashMap<&str, TaskStatus> = run
        .map(|r| {
            r.tasks
                .iter()
                .map(|t| (t.name.as_str(), t.status))
                .collect()
        })
        .unwrap_or_default();
    let mut edges = Vec::new();
    for i in 0..plan.len() as TaskIndex {
        for d in plan.direct_dependencies(i) {
            edges.push((plan.task(d).name(), plan.task(i).name()));
        }
    }
    let finally: Vec<&str> = plan
        .tasks
        .iter()
        .filter(|t| t.is_finally)
        .map(|t| t.name())
        .collect();
    let clusters = plan
        .stages
        .iter()
        .map(|stage| {
            let members = stage.members.iter().map(|&m| plan.task(m).name()).collect();
            (format!("stage {}", stage.number), members)
        })
        .chain((!finally.is_empty()).then(|| ("finally".to_string(), finally)));
    let label = |name: &str| match statuses.get(name) {
        Some(&s) => format!("{name}\\n{}", s.as_str()),
        None => name.to_string(),
    };
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
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
                    out.push_str(&format!("    \"{m}\""));
                    if let Some(&s) = statuses.get(m) {
                        out.push_str(&format!(" [label=\"{}\"", label(m)));
                        if let Some(c) = status_colour(s) {
                            out.push_str(&format!(", style=filled, fillcolor=\"{c}\""));
                        }
                        out.push(']');
                    }
                    out.push_str(";\n");
                }
                out.push_str("  }\n");
            }
            for (a, b) in &edges {
                out.push_str(&format!("  \"{a}\" -> \"{b}\";\n"));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (g, (title, members)) in clusters.enumerate() {
                out.push_str(&format!("  subgraph group{g}[\"{title}\"]\n"));
                for m in members {
                    out.push_str(&format!(
                        "    {}[\"{}\"]\n",
                        mermaid_id(m),
                        label(m).replace("\\n", "<br/>")
                    ));
                }
                out.push_str("  end\n");
            }
            for (a, b) in &edges {
                out.push_str(&format!("  {} --> {}\n", mermaid_id(a), mermaid_id(b)));
            }
            for (name, s) in &statuses {
                if let Some(c) = status_colour(*s) {
                    out.push_str(&format!("  style {} fill:{c}\n", mermaid_id(name)));
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
                first_launch_ms: Some(1_000),
                launch_ms: Some(1_000),
                finished_ms: Some(2_250),
                handle: Some(format!("/logs/{name}.log")),
            })
            .collect();
        RunView::assemble(header, tasks)
    }

    #[test]
    fn dot_graph_has_stage_clusters_finally_and_edges() {
        let dot = graph(&plan(), GraphFormat::Dot, None);
        assert!(dot.contains("label=\"stage 0\""), "{dot}");
        assert!(
            dot.contains("label=\"finally\";\n    style=dashed;"),
            "{dot}"
        );
        assert!(dot.contains("\"build\" -> \"unit-test\";"), "{dot}");
        assert!(dot.contains("\"build\" -> \"lint\";"), "{dot}");
        assert!(
            !dot.contains("fillcolor"),
            "no statuses without a run: {dot}"
        );
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
        assert!(mermaid.contains("build --> unit_test"), "{mermaid}");
        assert!(mermaid.contains("style build fill:#a1d99b"), "{mermaid}");
        assert!(!mermaid.contains("style notify"), "{mermaid}");
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

//! Validation: a [`RevisionRunSpec`] becomes a [`Plan`] — the checked,
//! typed dependency graph the scheduler runs — or every problem at once.
//!
//! Stage barriers are modelled as one virtual node per stage rather than an
//! edge between every pair of tasks of neighbouring stages, so the graph is
//! linear in tasks + `needs` edges even for wide stages.

use std::collections::HashMap;
use std::time::Duration;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::{Error, FieldErrors};
use crate::limits::{MAX_RETRIES, MAX_RETRY_DELAY, MAX_TASKS, MAX_TIMEOUT, quoted};
use crate::spec::{RevisionRunSpec, TaskSpec};
use crate::store::RunId;

/// Index of a task in its [`Plan`]: main tasks first, then finally tasks.
pub type TaskIndex = u32;

/// Default cap of the doubling retry delay.
pub const DEFAULT_RETRY_DELAY_MAX: Duration = Duration::from_secs(300);

/// Default of `options.lost_retries`: how many attempts of one task lost
/// with their executor (a worker killed, a PipelineRun deleted) are retried
/// as infrastructure failures, outside the task's own `retries`.
pub const DEFAULT_LOST_RETRIES: u32 = 2;

/// What a task waits for before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: the first stage, `needs: []`, or a finally task without needs.
    Open,
    /// Every task of the stage group with this index (the stage barrier).
    Stage(u32),
    /// The tasks listed by `needs` (a range of [`Plan::needs_of`]).
    Needs,
}

/// One validated task.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    /// The task as written.
    pub spec: TaskSpec,
    /// Stage number (`None` for finally tasks).
    pub stage: Option<u32>,
    /// True for tasks of `finally`.
    pub is_finally: bool,
    /// Timeout of one attempt.
    pub timeout: Option<Duration>,
    /// Delay before the second attempt.
    pub retry_delay: Option<Duration>,
    /// What the task waits for.
    pub gate: Gate,
}

impl PlannedTask {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// The tasks of one stage number.
#[derive(Debug, Clone)]
pub struct StageGroup {
    /// The stage number.
    pub number: u32,
    /// Its tasks, in document order.
    pub members: Vec<TaskIndex>,
}

/// Checked run-wide options.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Cancel running tasks on a failure that is not allowed.
    pub fail_fast: bool,
    /// At most this many tasks at once.
    pub max_parallel: Option<u32>,
    /// Run timeout.
    pub timeout: Option<Duration>,
    /// Cap of the retry delay.
    pub retry_delay_max: Duration,
    /// Lost attempts of one task retried as infrastructure failures
    /// (default [`DEFAULT_LOST_RETRIES`]).
    pub lost_retries: u32,
}

/// A validated revision run: tasks, stage groups and the dependency graph in
/// compact adjacency form. Build it with [`Plan::build`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The document it was built from.
    pub spec: RevisionRunSpec,
    /// Main tasks (`0..main_count`) then finally tasks.
    pub tasks: Vec<PlannedTask>,
    /// Number of main tasks.
    pub main_count: u32,
    /// Stage groups in ascending stage order.
    pub stages: Vec<StageGroup>,
    /// Checked options.
    pub options: PlanOptions,
    /// Stage group index of each main task.
    stage_of: Vec<u32>,
    /// `needs` of task i: `needs[needs_start[i]..needs_start[i+1]]`.
    needs_start: Vec<u32>,
    needs: Vec<TaskIndex>,
    /// Tasks that list task i in `needs`.
    dependents_start: Vec<u32>,
    dependents: Vec<TaskIndex>,
    /// Tasks gated by stage group g.
    barrier_start: Vec<u32>,
    barrier_dependents: Vec<TaskIndex>,
    by_name: HashMap<String, TaskIndex>,
}

/// True for a DNS-1123 label: 1–63 of `a-z0-9-`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Reads a duration of at most `max`.
fn parse_duration(
    text: &str,
    max: Duration,
    path: &str,
    errors: &mut FieldErrors,
) -> Option<Duration> {
    let shown = quoted(text);
    let too_long = || {
        format!(
            "{shown} is longer than the maximum of {}",
            humantime::format_duration(max)
        )
    };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            errors.push(path, format!("{shown} must be longer than zero"));
            None
        }
        // Too large for humantime to represent is past any maximum, too.
        Ok(d) if d > max => {
            errors.push(path, too_long());
            None
        }
        Err(humantime::DurationError::NumberOverflow) => {
            errors.push(path, too_long());
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                path,
                format!("{shown} is not a duration like 30s, 5m or 1h30m ({e})"),
            );
            None
        }
    }
}

fn csr(lists: &[Vec<TaskIndex>]) -> (Vec<u32>, Vec<TaskIndex>) {
    let mut start = Vec::with_capacity(lists.len() + 1);
    let mut flat = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    for l in lists {
        start.push(flat.len() as u32);
        flat.extend_from_slice(l);
    }
    start.push(flat.len() as u32);
    (start, flat)
}

impl Plan {
    /// Validates `spec` and builds its plan. Linear in tasks + edges.
    ///
    /// ```
    /// use stagetime_core::{plan::Plan, RevisionRunSpec};
    /// let spec: RevisionRunSpec = yaml_serde::from_str(
    ///     "{repo: r, commit: c, tasks: [{name: a, needs: [b]}, {name: b, needs: [a]}]}").unwrap();
    /// let err = Plan::build(spec).unwrap_err().to_string();
    /// assert!(err.contains("cycle"), "{err}");
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] with every problem found, each with its path:
    /// missing or malformed required fields, duplicate or invalid names,
    /// unknown `needs`, cycles (printed as a path), bad durations, negative or
    /// fractional stages, an empty run, a malformed `id`, and anything past
    /// the bounds of [`crate::limits`].
    pub fn build(mut spec: RevisionRunSpec) -> Result<Plan, Error> {
        let mut errors = FieldErrors::default();
        if let Some(id) = &spec.id
            && let Err(Error::Invalid(e)) = RunId::new(id.clone())
        {
            errors.0.extend(e.0);
        }
        let total = spec.tasks.len() + spec.finally.len();
        if total > MAX_TASKS {
            // Checking every task of a huge run would only bury this error.
            errors.push(
                "tasks",
                format!("{total} tasks (with finally tasks) exceed the maximum of {MAX_TASKS}"),
            );
            return Err(Error::Invalid(errors));
        }
        if spec.repo.trim().is_empty() {
            errors.push("repo", "required");
        }
        if spec.commit.trim().is_empty() {
            errors.push("commit", "required");
        }
        if spec.tasks.is_empty() {
            errors.push("tasks", "a revision run needs at least one task");
        }
        let options = PlanOptions {
            fail_fast: spec.options.fail_fast,
            max_parallel: spec.options.max_parallel,
            timeout: spec
                .options
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t, MAX_TIMEOUT, "options.timeout", &mut errors)),
            retry_delay_max: spec
                .options
                .retry_delay_max
                .as_deref()
                .and_then(|t| {
                    parse_duration(t, MAX_RETRY_DELAY, "options.retry_delay_max", &mut errors)
                })
                .unwrap_or(DEFAULT_RETRY_DELAY_MAX),
            lost_retries: spec.options.lost_retries.unwrap_or(DEFAULT_LOST_RETRIES),
        };
        if options.lost_retries > MAX_RETRIES {
            errors.push(
                "options.lost_retries",
                format!(
                    "{} exceeds the maximum of {MAX_RETRIES}",
                    options.lost_retries
                ),
            );
        }
        match options.max_parallel {
            Some(0) => errors.push("options.max_parallel", "must be at least 1"),
            Some(n) if n as usize > MAX_TASKS => errors.push(
                "options.max_parallel",
                format!("{n} exceeds the maximum of {MAX_TASKS}"),
            ),
            _ => {}
        }

        let main_specs = std::mem::take(&mut spec.tasks);
        let finally_specs = std::mem::take(&mut spec.finally);
        let main_count = main_specs.len();
        let total = main_count + finally_specs.len();
        let mut by_name: HashMap<String, TaskIndex> = HashMap::with_capacity(total);
        let mut tasks = Vec::with_capacity(total);
        let sections = [
            ("tasks", main_specs, false),
            ("finally", finally_specs, true),
        ];
        for (section, list, is_finally) in sections {
            for (i, t) in list.into_iter().enumerate() {
                let path = format!("{section}[{i}]");
                if t.name.is_empty() {
                    errors.push(format!("{path}.name"), "required");
                } else if !is_dns1123_label(&t.name) {
                    errors.push(
                        format!("{path}.name"),
                        format!(
                            "{} is not a valid name: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                            quoted(&t.name)
                        ),
                    );
                } else if let std::collections::hash_map::Entry::Vacant(slot) =
                    by_name.entry(t.name.clone())
                {
                    slot.insert(tasks.len() as TaskIndex);
                } else {
                    errors.push(
                        format!("{path}.name"),
                        format!("duplicate task name {:?}", t.name),
                    );
                }
                let stage = match (t.stage, is_finally) {
                    (Some(_), true) => {
                        errors.push(format!("{path}.stage"), "finally tasks have no stage");
                        None
                    }
                    (None, true) => None,
                    (None, false) => Some(0),
                    (Some(s), false) => match s.whole() {
                        Some(n) => Some(n),
                        None => {
                            errors.push(
                                format!("{path}.stage"),
                                format!("must be a whole number from 0 to {}, not {s}", u32::MAX),
                            );
                            Some(0)
                        }
                    },
                };
                if t.command.is_none() && t.pipeline.is_none() && t.custom.is_none() {
                    errors.push(
                        path.clone(),
                        "needs a `command` (local backend), a `pipeline` (Tekton) or a `custom` payload (a custom backend)",
                    );
                }
                if let Some(p) = &t.pipeline {
                    check_pipeline(p, &format!("{path}.pipeline"), &mut errors);
                }
                for (j, e) in t
                    .when
                    .iter()
                    .flat_map(|w| w.events.iter().flatten())
                    .enumerate()
                {
                    if !crate::spec::WHEN_EVENTS.contains(&e.as_str()) {
                        errors.push(
                            format!("{path}.when.events[{j}]"),
                            format!(
                                "{} is not one of push, tag, pull_request",
                                crate::limits::quoted(e)
                            ),
                        );
                    }
                }
                if let Some(c) = &t.command
                    && c.trim().is_empty()
                {
                    errors.push(format!("{path}.command"), "is empty");
                }
                if t.retries > MAX_RETRIES {
                    errors.push(
                        format!("{path}.retries"),
                        format!("{} exceeds the maximum of {MAX_RETRIES}", t.retries),
                    );
                }
                let timeout = t.timeout.as_deref().and_then(|d| {
                    parse_duration(d, MAX_TIMEOUT, &format!("{path}.timeout"), &mut errors)
                });
                let retry_delay = t.retry_delay.as_deref().and_then(|d| {
                    parse_duration(
                        d,
                        MAX_RETRY_DELAY,
                        &format!("{path}.retry_delay"),
                        &mut errors,
                    )
                });
                tasks.push(PlannedTask {
                    spec: t,
                    stage,
                    is_finally,
                    timeout,
                    retry_delay,
                    gate: Gate::Open,
                });
            }
        }

        // Stage groups, ascending; gaps in numbering are fine.
        let mut numbers: Vec<u32> = tasks[..main_count].iter().filter_map(|t| t.stage).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let group_of: HashMap<u32, u32> = numbers
            .iter()
            .enumerate()
            .map(|(g, n)| (*n, g as u32))
            .collect();
        let mut stages: Vec<StageGroup> = numbers
            .iter()
            .map(|n| StageGroup {
                number: *n,
                members: Vec::new(),
            })
            .collect();
        let mut stage_of = Vec::with_capacity(main_count);
        for (i, t) in tasks[..main_count].iter().enumerate() {
            let g = group_of[&t.stage.unwrap_or(0)];
            stages[g as usize].members.push(i as TaskIndex);
            stage_of.push(g);
        }

        // Explicit needs.
        let mut needs_lists: Vec<Vec<TaskIndex>> = vec![Vec::new(); total];
        let mut dependents_lists: Vec<Vec<TaskIndex>> = vec![Vec::new(); total];
        let mut barrier_lists: Vec<Vec<TaskIndex>> = vec![Vec::new(); stages.len()];
        for (i, task) in tasks.iter_mut().enumerate() {
            let (section, pos) = if i < main_count {
                ("tasks", i)
            } else {
                ("finally", i - main_count)
            };
            match &task.spec.needs {
                Some(needs) => {
                    task.gate = if needs.is_empty() {
                        Gate::Open
                    } else {
                        Gate::Needs
                    };
                    for (j, need) in needs.iter().enumerate() {
                        let path = format!("{section}[{pos}].needs[{j}]");
                        match by_name.get(need) {
                            None => errors.push(path, format!("unknown task {}", quoted(need))),
                            Some(&d) if (d as usize >= main_count) != task.is_finally => {
                                let msg = if task.is_finally {
                                    format!(
                                        "a finally task may only need finally tasks; {need:?} is a task of the run (finally tasks already wait for all of them)"
                                    )
                                } else {
                                    format!(
                                        "{need:?} is a finally task; tasks cannot need finally tasks"
                                    )
                                };
                                errors.push(path, msg);
                            }
                            Some(&d) => {
                                if needs_lists[i].contains(&d) {
                                    errors.push(path, format!("{need:?} is listed twice"));
                                } else {
                                    needs_lists[i].push(d);
                                    dependents_lists[d as usize].push(i as TaskIndex);
                                }
                            }
                        }
                    }
                }
                None if task.is_finally => task.gate = Gate::Open,
                None => {
                    let g = stage_of[i];
                    if g == 0 {
                        task.gate = Gate::Open;
                    } else {
                        task.gate = Gate::Stage(g - 1);
                        barrier_lists[(g - 1) as usize].push(i as TaskIndex);
                    }
                }
            }
        }

        // Cycles: tasks plus one node per stage barrier.
        find_cycles(
            &tasks,
            &stages,
            &stage_of,
            &needs_lists,
            &barrier_lists,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        let (needs_start, needs) = csr(&needs_lists);
        let (dependents_start, dependents) = csr(&dependents_lists);
        let (barrier_start, barrier_dependents) = csr(&barrier_lists);
        Ok(Plan {
            spec,
            tasks,
            main_count: main_count as u32,
            stages,
            options,
            stage_of,
            needs_start,
            needs,
            dependents_start,
            dependents,
            barrier_start,
            barrier_dependents,
            by_name,
        })
    }

    /// The whole document: the run-level fields with the tasks put back.
    pub fn to_spec(&self) -> RevisionRunSpec {
        let mut spec = self.spec.clone();
        let (main, finally) = self.tasks.split_at(self.main_count as usize);
        spec.tasks = main.iter().map(|t| t.spec.clone()).collect();
        spec.finally = finally.iter().map(|t| t.spec.clone()).collect();
        spec
    }

    /// The task called `name`.
    pub fn index_of(&self, name: &str) -> Option<TaskIndex> {
        self.by_name.get(name).copied()
    }

    /// The task at `index`.
    ///
    /// # Panics
    /// When `index` is out of range (indices come from this plan).
    pub fn task(&self, index: TaskIndex) -> &PlannedTask {
        &self.tasks[index as usize]
    }

    /// Number of tasks, finally included.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Always false: a plan has at least one task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The `needs` of task `i`, as indices.
    pub fn needs_of(&self, i: TaskIndex) -> &[TaskIndex] {
        let i = i as usize;
        &self.needs[self.needs_start[i] as usize..self.needs_start[i + 1] as usize]
    }

    /// Tasks listing `i` in their `needs`.
    pub fn dependents_of(&self, i: TaskIndex) -> &[TaskIndex] {
        let i = i as usize;
        &self.dependents[self.dependents_start[i] as usize..self.dependents_start[i + 1] as usize]
    }

    /// Tasks gated by the barrier of stage group `g`.
    pub fn barrier_dependents(&self, g: u32) -> &[TaskIndex] {
        let g = g as usize;
        &self.barrier_dependents[self.barrier_start[g] as usize..self.barrier_start[g + 1] as usize]
    }

    /// The stage group index of main task `i`.
    pub fn stage_group_of(&self, i: TaskIndex) -> Option<u32> {
        self.stage_of.get(i as usize).copied()
    }

    /// Every task `i` directly depends on (expanding the stage barrier).
    pub fn direct_dependencies(&self, i: TaskIndex) -> Vec<TaskIndex> {
        match self.task(i).gate {
            Gate::Open => Vec::new(),
            Gate::Needs => self.needs_of(i).to_vec(),
            Gate::Stage(g) => self.stages[g as usize].members.clone(),
        }
    }

    /// The tasks that must run again when `tasks` do: those, and every task
    /// that depends on one of them, directly or not (through `needs` or a
    /// stage barrier), as a flag per task index. Out-of-range indices are
    /// ignored.
    pub fn downstream_of(&self, tasks: &[TaskIndex]) -> Vec<bool> {
        let mut again = vec![false; self.tasks.len()];
        for &t in tasks {
            if let Some(flag) = again.get_mut(t as usize) {
                *flag = true;
            }
        }
        // Dependencies point to earlier stages or to `needs`, which form a
        // DAG: a pass per change is enough, and each pass only adds.
        let mut changed = tasks.iter().any(|&t| (t as usize) < again.len());
        while changed {
            changed = false;
            for i in 0..self.tasks.len() as TaskIndex {
                if !again[i as usize]
                    && self
                        .direct_dependencies(i)
                        .iter()
                        .any(|&d| again[d as usize])
                {
                    again[i as usize] = true;
                    changed = true;
                }
            }
        }
        again
    }
}

fn check_pipeline(p: &crate::spec::PipelineSpec, path: &str, errors: &mut FieldErrors) {
    match (&p.pipeline_ref, &p.resolver) {
        (Some(_), Some(_)) => errors.push(path, "give either `ref` or `resolver`, not both"),
        (None, None) => errors.push(
            path,
            "needs `ref` (a Pipeline name) or `resolver` (e.g. git)",
        ),
        (Some(r), None) if r.trim().is_empty() => errors.push(format!("{path}.ref"), "is empty"),
        _ => {}
    }
    for (i, ws) in p.workspaces.iter().enumerate() {
        let wpath = format!("{path}.workspaces[{i}]");
        if ws.name.is_empty() {
            errors.push(format!("{wpath}.name"), "required");
        }
        let sources = [
            ws.secret.is_some(),
            ws.persistent_volume_claim.is_some(),
            ws.config_map.is_some(),
            ws.volume_claim_template.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            errors.push(
                wpath.clone(),
                "give exactly one of secret, persistent_volume_claim, config_map, volume_claim_template",
            );
        }
        if let Some(v) = &ws.volume_claim_template
            && v.storage.trim().is_empty()
        {
            errors.push(
                format!("{wpath}.volume_claim_template.storage"),
                "required (e.g. 1Gi)",
            );
        }
    }
}

fn find_cycles(
    tasks: &[PlannedTask],
    stages: &[StageGroup],
    stage_of: &[u32],
    needs: &[Vec<TaskIndex>],
    barrier_dependents: &[Vec<TaskIndex>],
    errors: &mut FieldErrors,
) {
    let n = tasks.len();
    let mut g: DiGraph<(), ()> = DiGraph::with_capacity(n + stages.len(), n * 2);
    for _ in 0..n + stages.len() {
        g.add_node(());
    }
    let barrier = |s: u32| NodeIndex::new(n + s as usize);
    for (i, &s) in stage_of.iter().enumerate() {
        g.add_edge(NodeIndex::new(i), barrier(s), ());
    }
    for (s, deps) in barrier_dependents.iter().enumerate() {
        for &d in deps {
            g.add_edge(barrier(s as u32), NodeIndex::new(d as usize), ());
        }
    }
    for (i, list) in needs.iter().enumerate() {
        for &d in list {
            g.add_edge(NodeIndex::new(d as usize), NodeIndex::new(i), ());
        }
    }
    if toposort(&g, None).is_ok() {
        return;
    }
    let label = |v: NodeIndex| {
        if v.index() < n {
            tasks[v.index()].spec.name.clone()
        } else {
            format!("(end of stage {})", stages[v.index() - n].number)
        }
    };
    for scc in tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk the component from a task node back to itself (BFS keeps it short).
        let start = *scc
            .iter()
            .filter(|v| v.index() < n)
            .min()
            .unwrap_or(&scc[0]);
        let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for w in g.neighbors(v) {
                if w == start {
                    closing = Some(v);
                    break 'bfs;
                }
                if members.contains(&w) && !prev.contains_key(&w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut chain = Vec::new();
        let mut v = closing.unwrap_or(start);
        while v != start {
            chain.push(v);
            v = prev[&v];
        }
        chain.reverse();
        let path: Vec<NodeIndex> = std::iter::once(start)
            .chain(chain)
            .chain(std::iter::once(start))
            .collect();
        let text: Vec<String> = path.iter().map(|v| label(*v)).collect();
        let idx = start.index();
        let field = if tasks[idx].is_finally {
            format!("finally[{}].needs", idx - stage_of.len())
        } else {
            format!("tasks[{idx}].needs")
        };
        errors.push(field, format!("dependency cycle: {}", text.join(" -> ")));
    }
}

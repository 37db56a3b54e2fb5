//! [`RunView`]: a run as every edge shows it — per stage and per task:
//! status, attempts, times, reasons and backend handles.
//!
//! A stored [`RunRecord`] keeps the scheduler's state indexed like the plan
//! and the engine's wall-clock facts beside it; joining the two with the
//! plan's names, stages and flags is done here, once. The gRPC API, the CLI,
//! the operator's status, metrics, forge reports and the web page all read a
//! `RunView` instead of the record. Building one needs the run's [`Plan`];
//! [`PlanCache`] keeps plans per run so that reads never validate a stored
//! spec again.
//!
//! ```
//! use stagetime_core::plan::Plan;
//! use stagetime_core::scheduler::TaskStatus;
//! use stagetime_core::view::{PlanCache, RunView};
//! # use stagetime_core::store::{RECORD_FORMAT, RunId, RunRecord, RunState, TaskTiming};
//! # use stagetime_core::StageScheduler;
//! # use std::sync::Arc;
//! # let spec = serde_json::from_str(r#"{"repo": "app", "commit": "abc",
//! #   "tasks": [{"name": "build", "command": "make"}, {"name": "test", "stage": 1, "command": "make test"}]}"#).unwrap();
//! # let plan = Arc::new(Plan::build(spec).unwrap());
//! # let scheduler = StageScheduler::new(Arc::clone(&plan), 1).into_state();
//! # let record = RunRecord { format: RECORD_FORMAT, id: RunId::new("app-1").unwrap(), version: 1,
//! #   spec: plan.to_spec(), state: RunState::of(&scheduler), scheduler, created_ms: 0, updated_ms: 0,
//! #   finished_ms: None, timings: vec![TaskTiming::default(); plan.len()], outbox: vec![] };
//! let plans = PlanCache::default();
//! let view: RunView = plans.view(&record).unwrap();
//! assert_eq!(view.stages.len(), 2);
//! assert_eq!(view.task("test").unwrap().status, TaskStatus::Waiting);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::scheduler::TaskStatus;
use crate::store::{RunId, RunRecord, RunState, TaskTiming};

/// A run as people and programs look at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// Run id.
    pub id: RunId,
    /// Repository name.
    pub repo: String,
    /// Commit id.
    pub commit: String,
    /// Branch, when the document names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Author, when the document names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Concurrency group, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
    /// State of the run.
    pub state: RunState,
    /// The record's version (incremented by every change).
    pub version: u64,
    /// When the run was submitted (ms since the epoch).
    pub created_ms: u64,
    /// Last change (ms since the epoch).
    pub updated_ms: u64,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Stages in order, then the finally tasks as a last group.
    pub stages: Vec<StageView>,
    /// Main tasks in plan order, then finally tasks.
    pub tasks: Vec<TaskView>,
}

/// One stage of a [`RunView`] (or its finally tasks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    /// Stage number; `None` for the group of finally tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// Names of the stage's tasks, in plan order.
    pub tasks: Vec<String>,
    /// How many tasks.
    pub total: u32,
    /// How many succeeded.
    pub succeeded: u32,
    /// How many failed or timed out.
    pub failed: u32,
    /// How many are running or waiting out a retry backoff.
    pub running: u32,
    /// Where the stage is as a whole.
    pub phase: StagePhase,
}

impl StageView {
    /// `stage N`, or `finally`.
    pub fn label(&self) -> String {
        self.number
            .map_or_else(|| "finally".to_string(), |n| format!("stage {n}"))
    }
}

/// Where a stage is as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StagePhase {
    /// No task of it started yet.
    Pending,
    /// Some task started, some is not over.
    Running,
    /// Every task succeeded, or failed where that was allowed.
    Succeeded,
    /// A task failed that was not allowed to.
    Failed,
    /// A task was cancelled (and none failed).
    Cancelled,
    /// Every task was skipped.
    Skipped,
}

impl StagePhase {
    /// The phase of a stage whose tasks are `tasks`.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskView> + Clone) -> StagePhase {
        use TaskStatus as S;
        let mut all = tasks.into_iter().peekable();
        if all.peek().is_none() {
            return StagePhase::Pending;
        }
        let (mut open, mut started, mut all_skipped) = (false, false, true);
        let (mut failed, mut cancelled) = (false, false);
        for t in all {
            open |= !t.status.is_terminal();
            started |= matches!(t.status, S::Running | S::Backoff) || t.status.is_terminal();
            all_skipped &= t.status == S::Skipped;
            failed |= matches!(t.status, S::Failed | S::TimedOut) && !t.can_fail;
            cancelled |= t.status == S::Cancelled;
        }
        match () {
            _ if open && started => StagePhase::Running,
            _ if open => StagePhase::Pending,
            _ if all_skipped => StagePhase::Skipped,
            _ if failed => StagePhase::Failed,
            _ if cancelled => StagePhase::Cancelled,
            _ => StagePhase::Succeeded,
        }
    }

    /// The lowercase name (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StagePhase::Pending => "pending",
            StagePhase::Running => "running",
            StagePhase::Succeeded => "succeeded",
            StagePhase::Failed => "failed",
            StagePhase::Cancelled => "cancelled",
            StagePhase::Skipped => "skipped",
        }
    }
}

/// One task of a [`RunView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task name.
    pub name: String,
    /// Stage number; `None` for finally tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// Whether a failure of the task is allowed.
    pub can_fail: bool,
    /// Further attempts allowed after a failure.
    #[serde(default)]
    pub retries: u32,
    /// Tasks named in the task's `needs` (empty: the stage barrier applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Current status.
    pub status: TaskStatus,
    /// Attempts launched so far (the current or last attempt's number).
    pub attempt: u32,
    /// Last failure or skip reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts lost with their executor (a worker killed mid-attempt) and
    /// retried as infrastructure failures, outside `retries`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// Why the last lost attempt was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_reason: Option<String>,
    /// Launch and end times and the backend's handle of the last attempt
    /// (PipelineRun name or log file), as the engine recorded them;
    /// serialised inline.
    #[serde(flatten)]
    pub timing: TaskTiming,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskView {
    /// True for a finally task.
    pub fn is_finally(&self) -> bool {
        self.stage.is_none()
    }

    /// From the first launch (of the current round: a rerun starts the
    /// clock again) to the end, or to `now_ms` while it runs; `None` before
    /// the first launch.
    pub fn duration_ms(&self, now_ms: u64) -> Option<u64> {
        let start = self.timing.first_launch_ms?;
        Some(
            self.timing
                .finished_ms
                .unwrap_or(now_ms)
                .saturating_sub(start),
        )
    }

    /// True when the task ended in a way the run does not accept: failed or
    /// timed out without `can_fail`.
    pub fn failed_unallowed(&self) -> bool {
        matches!(self.status, TaskStatus::Failed | TaskStatus::TimedOut) && !self.can_fail
    }
}

impl RunView {
    /// The view of `record`, whose plan is `plan`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the record's task states do not match the plan.
    pub fn build(record: &RunRecord, plan: &Plan) -> Result<RunView> {
        let states = record.scheduler.tasks();
        if states.len() != plan.len() {
            return Err(Error::corrupt(
                format!("run {}", record.id),
                format!(
                    "the record has {} task states for a plan of {} tasks",
                    states.len(),
                    plan.len()
                ),
            ));
        }
        let tasks = plan
            .tasks
            .iter()
            .zip(states)
            .enumerate()
            .map(|(i, (t, st))| TaskView {
                name: t.name().to_string(),
                stage: t.stage,
                can_fail: t.spec.can_fail,
                retries: t.spec.retries,
                needs: t.spec.needs.clone().unwrap_or_default(),
                status: st.status,
                attempt: st.attempt,
                message: st.message.clone(),
                lost: st.lost,
                lost_reason: st.lost_reason.clone(),
                timing: record.timings.get(i).cloned().unwrap_or_default(),
            })
            .collect();
        let spec = &record.spec;
        Ok(RunView::assemble(
            RunView {
                id: record.id.clone(),
                repo: spec.repo.clone(),
                commit: spec.commit.clone(),
                branch: spec.branch.clone(),
                author: spec.author.clone(),
                concurrency_group: spec.options.concurrency_group.clone(),
                state: record.state,
                version: record.version,
                created_ms: record.created_ms,
                updated_ms: record.updated_ms,
                finished_ms: record.finished_ms,
                stages: Vec::new(),
                tasks: Vec::new(),
            },
            tasks,
        ))
    }

    /// A view from its header fields (`stages` and `tasks` ignored) and its
    /// tasks in plan order; the stages are derived from the tasks. For views
    /// that arrive over a transport.
    pub fn assemble(mut header: RunView, tasks: Vec<TaskView>) -> RunView {
        let mut groups: BTreeMap<(bool, u32), Vec<usize>> = BTreeMap::new();
        for (i, t) in tasks.iter().enumerate() {
            groups
                .entry((t.is_finally(), t.stage.unwrap_or(0)))
                .or_default()
                .push(i);
        }
        header.stages = groups
            .into_iter()
            .map(|((is_finally, number), members)| {
                let count = |f: fn(TaskStatus) -> bool| {
                    members.iter().filter(|&&i| f(tasks[i].status)).count() as u32
                };
                StageView {
                    number: (!is_finally).then_some(number),
                    tasks: members.iter().map(|&i| tasks[i].name.clone()).collect(),
                    total: members.len() as u32,
                    succeeded: count(|s| s == TaskStatus::Succeeded),
                    failed: count(|s| matches!(s, TaskStatus::Failed | TaskStatus::TimedOut)),
                    running: count(|s| matches!(s, TaskStatus::Running | TaskStatus::Backoff)),
                    phase: StagePhase::of(members.iter().map(|&i| &tasks[i])),
                }
            })
            .collect();
        header.tasks = tasks;
        header
    }

    /// The task called `name`.
    pub fn task(&self, name: &str) -> Option<&TaskView> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// The tasks of `stage`, in plan order.
    pub fn tasks_of<'a>(&'a self, stage: &'a StageView) -> impl Iterator<Item = &'a TaskView> {
        self.tasks
            .iter()
            .filter(move |t| t.is_finally() == stage.number.is_none() && t.stage == stage.number)
    }

    /// The first stage (finally last) with a task that started and is not
    /// over — what "the run is at stage N" means while it runs.
    pub fn current_stage(&self) -> Option<&StageView> {
        self.stages.iter().find(|s| {
            self.tasks_of(s)
                .any(|t| !t.status.is_terminal() && t.attempt > 0)
        })
    }

    /// The last stage (finally last) where some task was launched.
    pub fn last_started_stage(&self) -> Option<&StageView> {
        self.stages
            .iter()
            .rev()
            .find(|s| self.tasks_of(s).any(|t| t.attempt > 0))
    }

    /// Tasks that failed or timed out without `can_fail`.
    pub fn failed_tasks(&self) -> impl Iterator<Item = &TaskView> {
        self.tasks.iter().filter(|t| t.failed_unallowed())
    }

    /// Retries so far: attempts beyond each task's first.
    pub fn retries_used(&self) -> u32 {
        self.tasks.iter().map(|t| t.attempt.saturating_sub(1)).sum()
    }

    /// The run's round: 0, then one more per rerun (the newest round any
    /// attempt was launched in).
    pub fn round(&self) -> u32 {
        self.tasks
            .iter()
            .flat_map(|t| &t.timing.attempts)
            .map(|a| a.round)
            .max()
            .unwrap_or(0)
    }

    /// When the current round's first attempt was launched: for the first
    /// round, when a worker first picked the run up; `None` before that.
    pub fn started_ms(&self) -> Option<u64> {
        let round = self.round();
        self.tasks
            .iter()
            .flat_map(|t| &t.timing.attempts)
            .filter(|a| a.round == round)
            .map(|a| a.launch_ms)
            .min()
    }

    /// How long the run waited for a worker: from submission to its first
    /// launch, or to `now_ms` while no task has started. `None` for a rerun
    /// (its wait is not recorded) and for a run that ended without any
    /// launch (cancelled while queued: see [`RunView::duration_ms`]).
    pub fn queue_ms(&self, now_ms: u64) -> Option<u64> {
        if self.round() > 0 {
            return None;
        }
        match self.started_ms() {
            Some(start) => Some(start.saturating_sub(self.created_ms)),
            None if self.finished_ms.is_none() => Some(now_ms.saturating_sub(self.created_ms)),
            None => None,
        }
    }

    /// How long the run takes: from submission (for a rerun: from the
    /// rerun's first launch) to the end, or to `now_ms` while it runs — a
    /// rerun is not charged the time between the rounds.
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        let start = match self.round() {
            0 => self.created_ms,
            _ => self.started_ms().unwrap_or(self.created_ms),
        };
        self.finished_ms.unwrap_or(now_ms).saturating_sub(start)
    }
}

/// Plans of stored runs, built once per run and shared.
///
/// A run's document never changes once stored (a different document under
/// the same id is refused), so a plan is keyed by run id; the creation time
/// guards against a run that expired and was submitted again under its id.
/// At `capacity` runs the cache starts afresh (the plans of live runs come
/// back on their next read).
#[derive(Debug)]
pub struct PlanCache {
    plans: Mutex<HashMap<RunId, (u64, Arc<Plan>)>>,
    capacity: usize,
}

impl Default for PlanCache {
    /// A cache of up to 4,096 plans.
    fn default() -> Self {
        PlanCache::new(4096)
    }
}

impl PlanCache {
    /// A cache of up to `capacity` plans (at least one).
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            plans: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The plan of `record`, built on first use.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the stored spec does not build a plan.
    pub fn plan(&self, record: &RunRecord) -> Result<Arc<Plan>> {
        if let Some((created, plan)) = self.lock().get(&record.id)
            && *created == record.created_ms
        {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(Plan::build(record.spec.clone()).map_err(|e| {
            Error::corrupt_from(
                format!("run {}", record.id),
                "the stored spec is invalid",
                e,
            )
        })?);
        self.insert(record, Arc::clone(&plan));
        Ok(plan)
    }

    /// Remembers the plan of `record` (built elsewhere, e.g. at submit).
    pub fn insert(&self, record: &RunRecord, plan: Arc<Plan>) {
        let mut plans = self.lock();
        if plans.len() >= self.capacity && !plans.contains_key(&record.id) {
            plans.clear();
        }
        plans.insert(record.id.clone(), (record.created_ms, plan));
    }

    /// Forgets the plan of run `id` (it finished or went away).
    pub fn forget(&self, id: &RunId) {
        self.lock().remove(id);
    }

    /// How many plans are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no plan is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The view of `record`, with its cached plan.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the stored spec does not build a plan or does
    /// not match the record.
    pub fn view(&self, record: &RunRecord) -> Result<RunView> {
        RunView::build(record, &*self.plan(record)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, (u64, Arc<Plan>)>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StageScheduler;
    use crate::scheduler::{AttemptOutcome, Command, Event};
    use crate::store::RECORD_FORMAT;

    fn record() -> RunRecord {
        let spec = serde_json::from_value(serde_json::json!({
            "repo": "app", "commit": "abc", "branch": "main",
            "tasks": [
                {"name": "build", "command": "make"},
                {"name": "lint", "command": "make lint", "can_fail": true},
                {"name": "test", "stage": 1, "command": "make test", "retries": 2},
            ],
            "finally": [{"name": "notify", "command": "true"}],
        }))
        .unwrap();
        let plan = Arc::new(Plan::build(spec).unwrap());
        let mut s = StageScheduler::new(Arc::clone(&plan), 7);
        let mut out = Vec::new();
        s.handle_into(Event::Start, &mut out);
        for (task, outcome) in [
            (0, AttemptOutcome::Succeeded),
            (
                1,
                AttemptOutcome::Failed {
                    message: "lint".into(),
                },
            ),
        ] {
            s.handle_into(
                Event::TaskFinished {
                    task,
                    attempt: 1,
                    outcome,
                },
                &mut out,
            );
        }
        assert!(
            out.iter()
                .any(|c| matches!(c, Command::Launch { task: 2, .. }))
        );
        let scheduler = s.into_state();
        let mut timings = vec![TaskTiming::default(); plan.len()];
        timings[0] = TaskTiming {
            first_launch_ms: Some(1_000),
            launch_ms: Some(1_000),
            finished_ms: Some(3_500),
            handle: Some("build-1".into()),
            attempts: vec![],
        };
        RunRecord {
            format: RECORD_FORMAT,
            id: RunId::new("app-1").unwrap(),
            version: 4,
            spec: plan.to_spec(),
            state: RunState::of(&scheduler),
            scheduler,
            created_ms: 500,
            updated_ms: 3_600,
            finished_ms: None,
            timings,
            outbox: vec![],
        }
    }

    #[test]
    fn joins_plan_states_and_timings_per_stage_and_task() {
        let view = PlanCache::default().view(&record()).unwrap();
        assert_eq!(view.branch.as_deref(), Some("main"));
        assert_eq!(view.version, 4);
        let names: Vec<_> = view.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["build", "lint", "test", "notify"]);
        let build = view.task("build").unwrap();
        assert_eq!(build.status, TaskStatus::Succeeded);
        assert_eq!(build.duration_ms(9_999), Some(2_500));
        assert_eq!(build.timing.handle.as_deref(), Some("build-1"));
        assert_eq!(view.task("test").unwrap().retries, 2);
        assert!(view.task("notify").unwrap().is_finally());

        let stages: Vec<_> = view.stages.iter().map(|s| (s.label(), s.phase)).collect();
        assert_eq!(
            stages,
            [
                ("stage 0".to_string(), StagePhase::Succeeded),
                ("stage 1".to_string(), StagePhase::Running),
                ("finally".to_string(), StagePhase::Pending),
            ]
        );
        assert_eq!((view.stages[0].succeeded, view.stages[0].failed), (1, 1));
        assert_eq!(view.current_stage().unwrap().number, Some(1));
        assert_eq!(view.last_started_stage().unwrap().number, Some(1));
        assert_eq!(view.failed_tasks().count(), 0, "lint may fail");
    }

    #[test]
    fn a_view_that_crossed_a_transport_derives_the_same_stages() {
        let view = PlanCache::default().view(&record()).unwrap();
        let again = RunView::assemble(view.clone(), view.tasks.clone());
        assert_eq!(again, view);
        let json = serde_json::to_string(&view).unwrap();
        assert_eq!(serde_json::from_str::<RunView>(&json).unwrap(), view);
    }

    #[test]
    fn plans_are_built_once_per_run_and_rebuilt_for_a_new_run_under_the_same_id() {
        let plans = PlanCache::new(8);
        let r = record();
        let first = plans.plan(&r).unwrap();
        assert!(Arc::ptr_eq(&first, &plans.plan(&r).unwrap()));
        let mut resubmitted = r.clone();
        resubmitted.created_ms += 1;
        assert!(!Arc::ptr_eq(&first, &plans.plan(&resubmitted).unwrap()));
        assert_eq!(plans.len(), 1);
        plans.forget(&r.id);
        assert!(plans.is_empty());
    }

    #[test]
    fn a_record_that_does_not_match_its_plan_is_corrupt() {
        let mut r = record();
        r.spec.finally.clear();
        let e = PlanCache::default().view(&r).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
    }
}

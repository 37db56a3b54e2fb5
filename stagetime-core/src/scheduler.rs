//! The pure stage scheduler: a synchronous state machine with no IO, no
//! clock reads and no async runtime (sans-IO).
//!
//! Feed it past-tense [`Event`]s; it answers with imperative [`Command`]s.
//! Its [`SchedulerState`] is serde-serialisable, so a store can keep it and
//! any engine can resume it. The cost of one event is proportional to the
//! dependency edges it touches; the only whole-run passes happen once per run
//! (stopping after a failure or cancel, and a rerun).
//!
//! ```
//! use std::sync::Arc;
//! use stagetime_core::plan::Plan;
//! use stagetime_core::scheduler::{AttemptOutcome, Command, Event, RunOutcome, StageScheduler};
//!
//! let spec = yaml_serde::from_str(
//!     "{repo: r, commit: c, tasks: [{name: a, command: 'true'}, {name: b, stage: 1, command: 'true'}]}",
//! ).unwrap();
//! let plan = Arc::new(Plan::build(spec).unwrap());
//! let mut s = StageScheduler::new(plan, 7);
//! assert_eq!(s.handle(Event::Start), vec![Command::Launch { task: 0, attempt: 1 }]);
//! let next = s.handle(Event::TaskFinished { task: 0, attempt: 1, outcome: AttemptOutcome::Succeeded });
//! assert_eq!(next, vec![Command::Launch { task: 1, attempt: 1 }]);
//! let done = s.handle(Event::TaskFinished { task: 1, attempt: 1, outcome: AttemptOutcome::Succeeded });
//! assert_eq!(done, vec![Command::Complete { outcome: RunOutcome::Succeeded }]);
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::plan::{Gate, Plan, TaskIndex};

/// How one attempt of a task ended, as the backend observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Finished well.
    Succeeded,
    /// Finished badly (non-zero exit, failed PipelineRun, launch refused).
    Failed {
        /// Why, as the backend reports it.
        message: String,
    },
    /// Exceeded its timeout.
    TimedOut {
        /// Why, as the backend reports it.
        message: String,
    },
    /// Cancelled (by us or by someone else). Never retried.
    Cancelled {
        /// Why, as the backend reports it.
        message: String,
    },
    /// Lost with its executor: the worker (or node) running it died and
    /// nothing recorded how it ended. An infrastructure failure: retried up
    /// to the run's `options.lost_retries` times without using the task's
    /// own `retries`; past that it counts as a failure.
    Lost {
        /// What was lost and why, as the backend reports it.
        message: String,
    },
}

impl AttemptOutcome {
    fn message(&self) -> Option<&str> {
        match self {
            AttemptOutcome::Succeeded => None,
            AttemptOutcome::Failed { message }
            | AttemptOutcome::TimedOut { message }
            | AttemptOutcome::Cancelled { message }
            | AttemptOutcome::Lost { message } => Some(message),
        }
    }
}

/// A timer the scheduler asked for; it comes back as [`Event::TimerFired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "timer", rename_all = "snake_case")]
pub enum Timer {
    /// The attempt's timeout elapsed.
    TaskTimeout {
        /// The task.
        task: TaskIndex,
        /// The attempt it applies to.
        attempt: u32,
    },
    /// The backoff before `attempt` elapsed.
    RetryBackoff {
        /// The task.
        task: TaskIndex,
        /// The attempt to launch.
        attempt: u32,
    },
    /// The run timeout of the given run epoch (reruns start a new epoch).
    RunTimeout {
        /// Incremented by each rerun, so an old timer cannot stop a rerun.
        epoch: u32,
    },
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run was accepted; start it.
    Start,
    /// The backend accepted the launch of an attempt.
    TaskStarted {
        /// The task.
        task: TaskIndex,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt ended.
    TaskFinished {
        /// The task.
        task: TaskIndex,
        /// The attempt.
        attempt: u32,
        /// How it ended.
        outcome: AttemptOutcome,
    },
    /// A timer asked for by [`Command::ScheduleTimer`] elapsed.
    TimerFired {
        /// Which timer.
        timer: Timer,
    },
    /// Someone asked to cancel the run.
    CancelRequested,
    /// Someone asked to rerun a finished run: every task that did not
    /// succeed, plus `tasks` and everything downstream of them (their
    /// `needs` dependents and the later stages) even if they succeeded;
    /// other succeeded tasks are kept.
    RerunRequested {
        /// Tasks to run again although they succeeded (empty: none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tasks: Vec<TaskIndex>,
    },
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Launch this attempt (idempotently, keyed by run, task and attempt).
    Launch {
        /// The task.
        task: TaskIndex,
        /// The attempt, 1 for the first.
        attempt: u32,
    },
    /// Cancel this attempt in the backend.
    Cancel {
        /// The task.
        task: TaskIndex,
        /// The attempt.
        attempt: u32,
    },
    /// Deliver [`Event::TimerFired`] after this delay.
    ScheduleTimer {
        /// Which timer.
        timer: Timer,
        /// How long from now.
        #[serde(with = "duration_ms")]
        after: Duration,
    },
    /// The run is over.
    Complete {
        /// How it ended.
        outcome: RunOutcome,
    },
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::limits::millis(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every task succeeded or failed with `can_fail`.
    Succeeded,
    /// Some task failed (or was skipped, or the run timed out).
    Failed,
    /// The run was cancelled.
    Cancelled,
}

/// Where a task is. Its one text form is [`TaskStatus::as_str`] (also
/// its `Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for dependencies.
    Waiting,
    /// Ready, waiting for a `max_parallel` slot.
    Ready,
    /// An attempt is launched.
    Running,
    /// Waiting for the retry backoff to elapse.
    Backoff,
    /// Succeeded.
    Succeeded,
    /// Failed after its retries.
    Failed,
    /// Timed out after its retries.
    TimedOut,
    /// Cancelled.
    Cancelled,
    /// Never ran: a dependency was not satisfied, or the run stopped first.
    Skipped,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 9] = [
        TaskStatus::Waiting,
        TaskStatus::Ready,
        TaskStatus::Running,
        TaskStatus::Backoff,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::TimedOut,
        TaskStatus::Cancelled,
        TaskStatus::Skipped,
    ];

    /// The one name of a status, as serde writes it (`timed_out`, ...):
    /// what the CLI, the operator's status, metrics labels and the web page
    /// show.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Ready => "ready",
            TaskStatus::Running => "running",
            TaskStatus::Backoff => "backoff",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Skipped => "skipped",
        }
    }

    /// Parses [`TaskStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// True when the task will not change any more (until a rerun).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::TimedOut
                | TaskStatus::Cancelled
                | TaskStatus::Skipped
        )
    }
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Not started.
    Pending,
    /// Main tasks are running.
    Running,
    /// Every main task is terminal; finally tasks run.
    Finally,
    /// Over.
    Done,
}

/// Why new launches stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A failure that is not allowed.
    Failure,
    /// Cancel requested.
    Cancel,
    /// The run timeout elapsed.
    Timeout,
}

/// The state of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// Where it is.
    pub status: TaskStatus,
    /// Attempts launched so far (the current or last attempt's number).
    pub attempt: u32,
    /// The backend confirmed the current attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub started: bool,
    /// The last message (failure reason, skip reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts lost with their executor ([`AttemptOutcome::Lost`]) and
    /// retried as infrastructure failures, outside the task's `retries`
    /// (counted over the run's life, reruns included, like `attempt`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u32,
    /// Why the last lost attempt was lost; kept after the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_reason: Option<String>,
    /// Dependencies not yet terminal.
    #[serde(default)]
    pending: u32,
    /// Some dependency ended unsatisfied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    blocked: bool,
}

impl TaskState {
    fn new() -> Self {
        TaskState {
            status: TaskStatus::Waiting,
            attempt: 0,
            started: false,
            message: None,
            lost: 0,
            lost_reason: None,
            pending: 0,
            blocked: false,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BarrierState {
    remaining: u32,
    unsatisfied: bool,
}

/// The serialisable state of a [`StageScheduler`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerState {
    phase: RunPhase,
    stop: Option<StopReason>,
    running_cancelled: bool,
    cancel_requested: bool,
    any_unsatisfied: bool,
    outcome: Option<RunOutcome>,
    epoch: u32,
    tasks: Vec<TaskState>,
    barriers: Vec<BarrierState>,
    ready: VecDeque<TaskIndex>,
    running: u32,
    main_left: u32,
    finally_left: u32,
    rng: u64,
}

impl SchedulerState {
    /// The run's round: 0, then one more per rerun.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The run's phase.
    pub fn phase(&self) -> RunPhase {
        self.phase
    }

    /// The outcome, once the run is [`RunPhase::Done`].
    pub fn outcome(&self) -> Option<RunOutcome> {
        self.outcome
    }

    /// Why launches stopped, if they did.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Per-task state, indexed like the plan.
    pub fn tasks(&self) -> &[TaskState] {
        &self.tasks
    }

    /// Attempts running now.
    pub fn running(&self) -> u32 {
        self.running
    }

    /// Ends the run as failed without the scheduler's rules: the engine's
    /// quarantine of a run whose processing failed unexpectedly (a panic, a
    /// corrupt record). Every task not yet over ends with `message` — a
    /// running one as failed, the others as skipped. Returns the running
    /// attempts (task, attempt), for the caller to cancel.
    pub fn quarantine(&mut self, message: &str) -> Vec<(TaskIndex, u32)> {
        let mut running = Vec::new();
        for (i, t) in self.tasks.iter_mut().enumerate() {
            if t.status.is_terminal() {
                continue;
            }
            if t.status == TaskStatus::Running {
                running.push((i as TaskIndex, t.attempt));
                t.status = TaskStatus::Failed;
            } else {
                t.status = TaskStatus::Skipped;
            }
            t.message = Some(message.to_string());
        }
        self.ready.clear();
        self.running = 0;
        self.main_left = 0;
        self.finally_left = 0;
        self.phase = RunPhase::Done;
        self.outcome = Some(RunOutcome::Failed);
        self.stop.get_or_insert(StopReason::Failure);
        running
    }
}

/// The pure stage scheduler of one revision run.
#[derive(Debug, Clone)]
pub struct StageScheduler {
    plan: Arc<Plan>,
    state: SchedulerState,
}

impl StageScheduler {
    /// A scheduler for a run not yet started. `seed` drives the retry jitter,
    /// so a run replays identically for the same seed and events.
    pub fn new(plan: Arc<Plan>, seed: u64) -> Self {
        let total = plan.tasks.len();
        let state = SchedulerState {
            phase: RunPhase::Pending,
            stop: None,
            running_cancelled: false,
            cancel_requested: false,
            any_unsatisfied: false,
            outcome: None,
            epoch: 0,
            tasks: vec![TaskState::new(); total],
            barriers: plan
                .stages
                .iter()
                .map(|s| BarrierState {
                    remaining: s.members.len() as u32,
                    unsatisfied: false,
                })
                .collect(),
            ready: VecDeque::new(),
            running: 0,
            main_left: plan.main_count,
            finally_left: (total as u32) - plan.main_count,
            rng: seed,
        };
        StageScheduler { plan, state }
    }

    /// Resumes a scheduler from a stored state.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the state does not fit the plan.
    pub fn restore(plan: Arc<Plan>, state: SchedulerState) -> Result<Self, Error> {
        if state.tasks.len() != plan.tasks.len() || state.barriers.len() != plan.stages.len() {
            return Err(Error::corrupt(
                "scheduler state",
                format!(
                    "state has {} tasks and {} stages, the plan {} and {}",
                    state.tasks.len(),
                    state.barriers.len(),
                    plan.tasks.len(),
                    plan.stages.len()
                ),
            ));
        }
        Ok(StageScheduler { plan, state })
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The state (serialise this to persist the run).
    pub fn state(&self) -> &SchedulerState {
        &self.state
    }

    /// Gives the state away.
    pub fn into_state(self) -> SchedulerState {
        self.state
    }

    /// Applies one event and returns the commands it causes.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        self.handle_into(event, &mut out);
        out
    }

    /// Applies one event, appending the commands it causes to `out`.
    ///
    /// Events are idempotent: a repeated or stale event (an old attempt, a
    /// timer of an earlier epoch, a cancel of a finished run) changes nothing.
    pub fn handle_into(&mut self, event: Event, out: &mut Vec<Command>) {
        let total = self.plan.tasks.len() as TaskIndex;
        match event {
            Event::Start => self.start(out),
            Event::TaskStarted { task, attempt } if task < total => {
                let timeout = self.plan.task(task).timeout;
                let st = &mut self.state.tasks[task as usize];
                if st.status == TaskStatus::Running && st.attempt == attempt && !st.started {
                    st.started = true;
                    if let Some(after) = timeout {
                        out.push(Command::ScheduleTimer {
                            timer: Timer::TaskTimeout { task, attempt },
                            after,
                        });
                    }
                }
            }
            Event::TaskFinished {
                task,
                attempt,
                outcome,
            } if task < total => {
                if self.is_current(task, attempt) {
                    self.finish_attempt(task, outcome, out);
                }
            }
            Event::TimerFired { timer } => self.timer_fired(timer, out),
            Event::CancelRequested => self.cancel(out),
            Event::RerunRequested { tasks } => self.rerun(&tasks, out),
            Event::TaskStarted { .. } | Event::TaskFinished { .. } => {}
        }
        self.advance(out);
    }

    fn is_current(&self, task: TaskIndex, attempt: u32) -> bool {
        let st = &self.state.tasks[task as usize];
        st.status == TaskStatus::Running && st.attempt == attempt
    }

    fn is_main(&self, task: TaskIndex) -> bool {
        task < self.plan.main_count
    }

    fn start(&mut self, out: &mut Vec<Command>) {
        if self.state.phase != RunPhase::Pending {
            return;
        }
        self.state.phase = RunPhase::Running;
        if let Some(after) = self.plan.options.timeout {
            out.push(Command::ScheduleTimer {
                timer: Timer::RunTimeout {
                    epoch: self.state.epoch,
                },
                after,
            });
        }
        for i in 0..self.plan.main_count {
            let pending = match self.plan.task(i).gate {
                Gate::Open => 0,
                Gate::Stage(_) => 1,
                Gate::Needs => self.plan.needs_of(i).len() as u32,
            };
            self.set_pending(i, pending);
        }
    }

    fn set_pending(&mut self, i: TaskIndex, pending: u32) {
        let st = &mut self.state.tasks[i as usize];
        st.pending = pending;
        if pending == 0 {
            st.status = TaskStatus::Ready;
            self.state.ready.push_back(i);
        }
    }

    fn timer_fired(&mut self, timer: Timer, out: &mut Vec<Command>) {
        let total = self.plan.tasks.len() as TaskIndex;
        match timer {
            Timer::TaskTimeout { task, attempt } if task < total => {
                if self.is_current(task, attempt) {
                    out.push(Command::Cancel { task, attempt });
                    let after = self.plan.task(task).timeout.unwrap_or_default();
                    let message = format!("timed out after {}", humantime::format_duration(after));
                    self.finish_attempt(task, AttemptOutcome::TimedOut { message }, out);
                }
            }
            Timer::RetryBackoff { task, attempt } if task < total => {
                let st = &mut self.state.tasks[task as usize];
                if st.status == TaskStatus::Backoff && st.attempt + 1 == attempt {
                    st.status = TaskStatus::Ready;
                    self.state.ready.push_back(task);
                }
            }
            Timer::RunTimeout { epoch } => {
                if epoch == self.state.epoch && self.state.phase == RunPhase::Running {
                    self.stop(StopReason::Timeout, out);
                }
            }
            Timer::TaskTimeout { .. } | Timer::RetryBackoff { .. } => {}
        }
    }

    fn finish_attempt(&mut self, task: TaskIndex, outcome: AttemptOutcome, out: &mut Vec<Command>) {
        self.state.running -= 1;
        let planned = self.plan.task(task);
        let (retries, can_fail, is_finally) = (
            planned.spec.retries,
            planned.spec.can_fail,
            planned.is_finally,
        );
        let lost_retries = self.plan.options.lost_retries;
        let may_retry = is_finally || self.state.stop.is_none();
        let st = &mut self.state.tasks[task as usize];
        st.started = false;
        st.message = outcome.message().map(str::to_string);
        if let AttemptOutcome::Lost { message } = &outcome {
            st.lost_reason = Some(message.clone());
            if st.lost < lost_retries && may_retry {
                // An infrastructure failure: launched again at once, as a new
                // attempt, without using the task's own retries.
                st.lost += 1;
                st.message = Some(format!(
                    "{message} (retried as an infrastructure failure, {} of {lost_retries})",
                    st.lost
                ));
                st.status = TaskStatus::Ready;
                self.state.ready.push_back(task);
                return;
            }
        }
        let terminal = match outcome {
            AttemptOutcome::Succeeded => TaskStatus::Succeeded,
            AttemptOutcome::Cancelled { .. } => TaskStatus::Cancelled,
            AttemptOutcome::Failed { .. }
            | AttemptOutcome::TimedOut { .. }
            | AttemptOutcome::Lost { .. } => {
                // Lost attempts retried as infrastructure failures do not count.
                let own_attempts = st.attempt.saturating_sub(st.lost);
                if own_attempts <= retries && may_retry {
                    st.status = TaskStatus::Backoff;
                    let attempt = st.attempt + 1;
                    match self.backoff(task, attempt) {
                        Some(after) => out.push(Command::ScheduleTimer {
                            timer: Timer::RetryBackoff { task, attempt },
                            after,
                        }),
                        None => {
                            self.state.tasks[task as usize].status = TaskStatus::Ready;
                            self.state.ready.push_back(task);
                        }
                    }
                    return;
                }
                if matches!(outcome, AttemptOutcome::TimedOut { .. }) {
                    TaskStatus::TimedOut
                } else {
                    TaskStatus::Failed
                }
            }
        };
        st.status = terminal;
        let allowed = terminal == TaskStatus::Succeeded
            || (can_fail && matches!(terminal, TaskStatus::Failed | TaskStatus::TimedOut));
        self.settle(task);
        if !allowed && !is_finally {
            self.stop(StopReason::Failure, out);
        }
    }

    /// Delay before `attempt` (≥ 2): `retry_delay` doubled per earlier retry
    /// (lost attempts retried as infrastructure failures do not count),
    /// capped, and up to 10% shorter by the seeded jitter. `None`: no delay.
    fn backoff(&mut self, task: TaskIndex, attempt: u32) -> Option<Duration> {
        let base = self.plan.task(task).retry_delay?;
        let lost = self.state.tasks[task as usize].lost;
        let doublings = attempt.saturating_sub(lost).saturating_sub(2).min(31);
        let exp = base.checked_mul(1u32 << doublings).unwrap_or(Duration::MAX);
        let capped = exp.min(self.plan.options.retry_delay_max);
        let jitter = 1.0 - 0.1 * self.next_unit();
        Some(capped.mul_f64(jitter))
    }

    /// splitmix64: a tiny, serialisable, seeded source of jitter.
    fn next_unit(&mut self) -> f64 {
        self.state.rng = self.state.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn is_satisfied(&self, task: TaskIndex) -> bool {
        match self.state.tasks[task as usize].status {
            TaskStatus::Succeeded => true,
            TaskStatus::Failed | TaskStatus::TimedOut => self.plan.task(task).spec.can_fail,
            _ => false,
        }
    }

    /// A task became terminal: release (or skip) whatever waited for it.
    fn settle(&mut self, first: TaskIndex) {
        let plan = Arc::clone(&self.plan);
        let mut work = vec![first];
        while let Some(i) = work.pop() {
            let satisfied = self.is_satisfied(i);
            if !satisfied {
                self.state.any_unsatisfied = true;
            }
            if self.is_main(i) {
                self.state.main_left -= 1;
                if let Some(g) = plan.stage_group_of(i) {
                    let b = &mut self.state.barriers[g as usize];
                    b.remaining -= 1;
                    b.unsatisfied |= !satisfied;
                    if b.remaining == 0 {
                        let unsatisfied = b.unsatisfied;
                        for &d in plan.barrier_dependents(g) {
                            self.dependency_done(d, unsatisfied, &mut work);
                        }
                    }
                }
            } else {
                self.state.finally_left -= 1;
            }
            for &d in plan.dependents_of(i) {
                self.dependency_done(d, !satisfied, &mut work);
            }
        }
    }

    fn dependency_done(&mut self, d: TaskIndex, unsatisfied: bool, work: &mut Vec<TaskIndex>) {
        let stopped = self.is_main(d) && self.state.stop.is_some();
        let st = &mut self.state.tasks[d as usize];
        if st.status != TaskStatus::Waiting {
            return;
        }
        st.pending -= 1;
        st.blocked |= unsatisfied;
        if st.pending > 0 {
            return;
        }
        if st.blocked || stopped {
            st.status = TaskStatus::Skipped;
            st.message = Some("a dependency was not satisfied".into());
            work.push(d);
        } else {
            st.status = TaskStatus::Ready;
            self.state.ready.push_back(d);
        }
    }

    fn cancel(&mut self, out: &mut Vec<Command>) {
        match self.state.phase {
            RunPhase::Done => {}
            RunPhase::Finally => self.state.cancel_requested = true,
            RunPhase::Pending => {
                self.start(out);
                self.state.ready.clear();
                self.stop(StopReason::Cancel, out);
            }
            RunPhase::Running => self.stop(StopReason::Cancel, out),
        }
    }

    /// Stops new launches of main tasks: pending ones are skipped, and
    /// running ones cancelled unless this is a failure without `fail_fast`.
    fn stop(&mut self, reason: StopReason, out: &mut Vec<Command>) {
        if reason == StopReason::Cancel {
            self.state.cancel_requested = true;
        }
        let cancel_running = match reason {
            StopReason::Failure => self.plan.options.fail_fast,
            StopReason::Cancel | StopReason::Timeout => true,
        };
        if self.state.stop.is_some() && (!cancel_running || self.state.running_cancelled) {
            return;
        }
        self.state.running_cancelled |= cancel_running;
        self.state.stop.get_or_insert(reason);
        let message = match reason {
            StopReason::Failure => "the run failed",
            StopReason::Cancel => "the run was cancelled",
            StopReason::Timeout => "the run timed out",
        };
        for i in 0..self.plan.main_count {
            let st = &mut self.state.tasks[i as usize];
            let next = match st.status {
                // A task with a failed attempt behind it (waiting for its
                // backoff or a slot) ends failed, not skipped.
                TaskStatus::Waiting | TaskStatus::Ready if st.attempt == 0 => TaskStatus::Skipped,
                TaskStatus::Waiting | TaskStatus::Ready | TaskStatus::Backoff => TaskStatus::Failed,
                TaskStatus::Running if cancel_running => {
                    out.push(Command::Cancel {
                        task: i,
                        attempt: st.attempt,
                    });
                    self.state.running -= 1;
                    TaskStatus::Cancelled
                }
                _ => continue,
            };
            if next != TaskStatus::Failed {
                st.message = Some(message.to_string());
            }
            st.status = next;
            st.started = false;
            self.state.main_left -= 1;
            self.state.any_unsatisfied = true;
        }
        let main = self.plan.main_count;
        self.state.ready.retain(|&i| i >= main);
    }

    fn rerun(&mut self, forced: &[TaskIndex], out: &mut Vec<Command>) {
        if self.state.phase != RunPhase::Done {
            return;
        }
        let plan = Arc::clone(&self.plan);
        let again = plan.downstream_of(forced);
        let s = &mut self.state;
        s.phase = RunPhase::Running;
        s.stop = None;
        s.running_cancelled = false;
        s.cancel_requested = false;
        s.any_unsatisfied = false;
        s.outcome = None;
        s.epoch += 1;
        s.ready.clear();
        s.main_left = 0;
        for b in &mut s.barriers {
            b.remaining = 0;
            b.unsatisfied = false;
        }
        for (i, st) in s.tasks.iter_mut().enumerate() {
            let main = (i as u32) < plan.main_count;
            if main && st.status == TaskStatus::Succeeded && !again[i] {
                continue;
            }
            *st = TaskState {
                attempt: st.attempt,
                lost: st.lost,
                ..TaskState::new()
            };
            if main {
                s.main_left += 1;
                if let Some(g) = plan.stage_group_of(i as TaskIndex) {
                    s.barriers[g as usize].remaining += 1;
                }
            }
        }
        s.finally_left = plan.tasks.len() as u32 - plan.main_count;
        if let Some(after) = plan.options.timeout {
            out.push(Command::ScheduleTimer {
                timer: Timer::RunTimeout { epoch: s.epoch },
                after,
            });
        }
        for i in 0..plan.main_count {
            if self.state.tasks[i as usize].status != TaskStatus::Waiting {
                continue;
            }
            let pending = match plan.task(i).gate {
                Gate::Open => 0,
                Gate::Stage(g) => u32::from(self.state.barriers[g as usize].remaining > 0),
                Gate::Needs => plan
                    .needs_of(i)
                    .iter()
                    .filter(|&&d| self.state.tasks[d as usize].status != TaskStatus::Succeeded)
                    .count() as u32,
            };
            self.set_pending(i, pending);
        }
    }

    /// Launches what may run, enters the finally phase and completes the run.
    fn advance(&mut self, out: &mut Vec<Command>) {
        loop {
            if matches!(self.state.phase, RunPhase::Pending | RunPhase::Done) {
                return;
            }
            while let Some(&i) = self.state.ready.front() {
                if self
                    .plan
                    .options
                    .max_parallel
                    .is_some_and(|m| self.state.running >= m)
                {
                    break;
                }
                self.state.ready.pop_front();
                let st = &mut self.state.tasks[i as usize];
                if st.status != TaskStatus::Ready {
                    continue;
                }
                st.status = TaskStatus::Running;
                st.attempt += 1;
                st.started = false;
                self.state.running += 1;
                out.push(Command::Launch {
                    task: i,
                    attempt: st.attempt,
                });
            }
            match self.state.phase {
                RunPhase::Running if self.state.main_left == 0 => {
                    self.state.phase = RunPhase::Finally;
                    for i in self.plan.main_count..self.plan.tasks.len() as TaskIndex {
                        let pending = self.plan.needs_of(i).len() as u32;
                        self.set_pending(i, pending);
                    }
                }
                RunPhase::Finally if self.state.finally_left == 0 => {
                    self.state.phase = RunPhase::Done;
                    let outcome = if self.state.cancel_requested {
                        RunOutcome::Cancelled
                    } else if self.state.any_unsatisfied {
                        RunOutcome::Failed
                    } else {
                        RunOutcome::Succeeded
                    };
                    self.state.outcome = Some(outcome);
                    out.push(Command::Complete { outcome });
                    return;
                }
                _ => return,
            }
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

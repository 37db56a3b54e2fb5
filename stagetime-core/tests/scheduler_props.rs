#![cfg(feature = "test-util")]
//! Property tests of the pure stage scheduler and of validation.
//!
//! A driver plays the backend and the clock: it keeps the attempts the
//! scheduler launched (and did not cancel), finishes random ones with random
//! outcomes, reports some as started, fires pending timers, cancels the run,
//! replays old (stale) events, and at a random point forks a copy of the
//! scheduler through a serde round trip that must behave identically.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};
use proptest::prelude::*;
use stagetime_core::Error;
use stagetime_core::plan::{Plan, TaskIndex};
use stagetime_core::scheduler::{
    AttemptOutcome, Command, Event, RunOutcome, RunPhase, SchedulerState, StageScheduler,
    TaskStatus, Timer,
};
use stagetime_core::spec::RevisionRunSpec;
use stagetime_core::testkit::strategies::{maybe_cyclic_spec, valid_spec};

/// Upper bound of driver steps; a run that needs more does not terminate.
const MAX_STEPS: usize = 5_000;

/// `valid_spec` plus task timeouts, retry delays, a run timeout, a low
/// retry-delay cap and budgets of lost-attempt retries, so that every kind
/// of timer and retry shows up.
fn spec_strategy() -> impl Strategy<Value = RevisionRunSpec> {
    (
        valid_spec(10),
        prop::collection::vec((any::<bool>(), any::<bool>()), 1..8),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u32..4),
    )
        .prop_map(|(mut spec, extras, run_timeout, low_cap, lost_retries)| {
            spec.options.lost_retries = lost_retries;
            for (i, t) in spec
                .tasks
                .iter_mut()
                .chain(spec.finally.iter_mut())
                .enumerate()
            {
                let (timeout, delay) = extras[i % extras.len()];
                if timeout {
                    t.timeout = Some("30s".into());
                }
                if delay {
                    t.retry_delay = Some("1s".into());
                }
            }
            if run_timeout {
                spec.options.timeout = Some("1h".into());
            }
            if low_cap {
                spec.options.retry_delay_max = Some("3s".into());
            }
            spec
        })
}

struct Driver {
    plan: Arc<Plan>,
    sched: StageScheduler,
    /// The copy restored from JSON mid-run; fed the same events.
    twin: Option<StageScheduler>,
    running: BTreeSet<(TaskIndex, u32)>,
    timers: Vec<Timer>,
    launched: HashSet<(TaskIndex, u32)>,
    last_attempt: Vec<u32>,
    /// Tasks whose attempt the driver reported as succeeded.
    reported_success: HashSet<TaskIndex>,
    /// Tasks an attempt of which the driver reported as cancelled.
    cancelled_outcome: HashSet<TaskIndex>,
    task_timeouts_scheduled: HashSet<(TaskIndex, u32)>,
    history: Vec<Event>,
    cancel_requested: bool,
    run_timed_out: bool,
    completed: Vec<RunOutcome>,
}

impl Driver {
    fn new(plan: Arc<Plan>, seed: u64) -> Self {
        let n = plan.len();
        Driver {
            sched: StageScheduler::new(Arc::clone(&plan), seed),
            plan,
            twin: None,
            running: BTreeSet::new(),
            timers: Vec::new(),
            launched: HashSet::new(),
            last_attempt: vec![0; n],
            reported_success: HashSet::new(),
            cancelled_outcome: HashSet::new(),
            task_timeouts_scheduled: HashSet::new(),
            history: Vec::new(),
            cancel_requested: false,
            run_timed_out: false,
            completed: Vec::new(),
        }
    }

    fn state(&self) -> &SchedulerState {
        self.sched.state()
    }

    fn status(&self, t: TaskIndex) -> TaskStatus {
        self.state().tasks()[t as usize].status
    }

    fn can_fail(&self, t: TaskIndex) -> bool {
        self.plan.task(t).spec.can_fail
    }

    fn is_main(&self, t: TaskIndex) -> bool {
        t < self.plan.main_count
    }

    /// Satisfied as the contract defines it, cross-checked with what the driver reported.
    fn satisfied(&self, t: TaskIndex) -> bool {
        match self.status(t) {
            TaskStatus::Succeeded => {
                assert!(
                    self.reported_success.contains(&t),
                    "task {t} succeeded without a reported success"
                );
                true
            }
            TaskStatus::Failed | TaskStatus::TimedOut => self.can_fail(t),
            _ => false,
        }
    }

    fn fork(&mut self) {
        let json = serde_json::to_string(self.sched.state()).unwrap();
        let back: SchedulerState = serde_json::from_str(&json).unwrap();
        assert_eq!(
            &back,
            self.sched.state(),
            "serde round trip changed the state"
        );
        self.twin = Some(StageScheduler::restore(Arc::clone(&self.plan), back).unwrap());
    }

    fn send(&mut self, event: Event) {
        let phase_before = self.state().phase();
        if let Event::TimerFired {
            timer: Timer::RunTimeout { .. },
        } = event
            && phase_before == RunPhase::Running
        {
            self.run_timed_out = true;
        }
        let commands = self.sched.handle(event.clone());
        if let Some(twin) = &mut self.twin {
            let again = twin.handle(event.clone());
            assert_eq!(commands, again, "restored copy diverged on {event:?}");
        }
        self.history.push(event.clone());
        let max_parallel = self.plan.options.max_parallel;
        for command in &commands {
            match *command {
                Command::Launch { task, attempt } => {
                    assert!(self.completed.is_empty(), "launch after the run completed");
                    assert!(
                        self.launched.insert((task, attempt)),
                        "({task}, {attempt}) launched twice"
                    );
                    assert_eq!(
                        attempt,
                        self.last_attempt[task as usize] + 1,
                        "attempts of task {task} are not consecutive"
                    );
                    let lost = self.state().tasks()[task as usize].lost;
                    assert!(
                        lost <= self.plan.options.lost_retries,
                        "task {task} retried {lost} lost attempts, beyond the budget"
                    );
                    assert!(
                        attempt <= self.plan.task(task).spec.retries + 1 + lost,
                        "task {task} launched beyond its retries"
                    );
                    assert!(
                        !self.reported_success.contains(&task),
                        "task {task} launched again after a recorded success"
                    );
                    assert!(
                        !self.cancelled_outcome.contains(&task),
                        "task {task} retried after a cancelled attempt"
                    );
                    for d in self.plan.direct_dependencies(task) {
                        assert!(
                            self.satisfied(d),
                            "task {task} launched while dependency {d} is {:?}",
                            self.status(d)
                        );
                    }
                    if !self.is_main(task) {
                        for i in 0..self.plan.main_count {
                            assert!(
                                self.status(i).is_terminal(),
                                "finally task {task} launched while main task {i} is {:?}",
                                self.status(i)
                            );
                        }
                    } else {
                        assert!(
                            self.state().stop_reason().is_none(),
                            "main task {task} launched after the run stopped"
                        );
                    }
                    self.last_attempt[task as usize] = attempt;
                    self.running.insert((task, attempt));
                }
                Command::Cancel { task, attempt } => {
                    assert!(
                        self.running.remove(&(task, attempt)),
                        "cancel of ({task}, {attempt}), which is not running"
                    );
                }
                Command::ScheduleTimer { timer, after } => {
                    match timer {
                        Timer::TaskTimeout { task, attempt } => {
                            assert_eq!(
                                event,
                                Event::TaskStarted { task, attempt },
                                "a task timeout may only start with the task"
                            );
                            assert!(
                                self.task_timeouts_scheduled.insert((task, attempt)),
                                "timeout of ({task}, {attempt}) scheduled twice"
                            );
                            assert_eq!(Some(after), self.plan.task(task).timeout);
                        }
                        Timer::RetryBackoff { task, attempt } => {
                            let base = self.plan.task(task).retry_delay.unwrap();
                            let lost = self.state().tasks()[task as usize].lost;
                            let d = (base * (1u32 << (attempt - lost - 2)))
                                .min(self.plan.options.retry_delay_max);
                            assert!(
                                after <= d && after >= d.mul_f64(0.9),
                                "backoff before attempt {attempt}: {after:?} outside [0.9, 1] x {d:?}"
                            );
                        }
                        Timer::RunTimeout { epoch } => {
                            assert_eq!(epoch, 0);
                            assert_eq!(Some(after), self.plan.options.timeout);
                        }
                    }
                    self.timers.push(timer);
                }
                Command::Complete { outcome } => self.completed.push(outcome),
            }
        }
        assert_eq!(
            self.running.len() as u32,
            self.state().running(),
            "the scheduler's count of running attempts disagrees after {event:?}"
        );
        if let Some(m) = max_parallel {
            assert!(self.running.len() as u32 <= m, "max_parallel {m} exceeded");
        }
        if let Some(reason) = self.state().stop_reason() {
            let cancel_running = self.plan.options.fail_fast
                || self.cancel_requested
                || self.run_timed_out
                || reason != stagetime_core::scheduler::StopReason::Failure;
            if cancel_running {
                assert!(
                    self.running.iter().all(|(t, _)| !self.is_main(*t)),
                    "main tasks still running after a stop that cancels them ({reason:?})"
                );
            }
        }
    }

    fn finish(&mut self, idx: usize, kind: u32) {
        let Some(&(task, attempt)) = self.running.iter().nth(idx % self.running.len().max(1))
        else {
            return;
        };
        let outcome = match kind % 20 {
            0..=12 => AttemptOutcome::Succeeded,
            13..=16 => AttemptOutcome::Failed {
                message: "exit 1".into(),
            },
            17 => AttemptOutcome::TimedOut {
                message: "too slow".into(),
            },
            18 => AttemptOutcome::Lost {
                message: "its worker died".into(),
            },
            _ => AttemptOutcome::Cancelled {
                message: "someone cancelled it".into(),
            },
        };
        self.running.remove(&(task, attempt));
        match outcome {
            AttemptOutcome::Succeeded => {
                self.reported_success.insert(task);
            }
            AttemptOutcome::Cancelled { .. } => {
                self.cancelled_outcome.insert(task);
            }
            _ => {}
        }
        self.send(Event::TaskFinished {
            task,
            attempt,
            outcome,
        });
    }

    fn step(&mut self, c: u32) {
        let r = (c / 100) as usize;
        match c % 100 {
            0..=54 => self.finish(r, c >> 20),
            55..=69 => {
                if let Some(&(task, attempt)) =
                    self.running.iter().nth(r % self.running.len().max(1))
                {
                    self.send(Event::TaskStarted { task, attempt });
                }
            }
            70..=84 => {
                if !self.timers.is_empty() {
                    let timer = self.timers.remove(r % self.timers.len());
                    self.send(Event::TimerFired { timer });
                }
            }
            85..=87 => {
                self.cancel_requested = true;
                self.send(Event::CancelRequested);
            }
            88..=89 => {
                if self.twin.is_none() {
                    self.fork();
                }
            }
            _ => {
                if !self.history.is_empty() {
                    let old = self.history[r % self.history.len()].clone();
                    if old == Event::CancelRequested {
                        self.cancel_requested = true;
                    }
                    self.send(old);
                }
            }
        }
    }

    /// Makes progress once the random choices are used up: finish a running
    /// attempt well, else fire a task timer. Nothing to do means a stuck run.
    fn default_step(&mut self) {
        if !self.running.is_empty() {
            self.finish(0, 0);
            return;
        }
        if let Some(pos) = self
            .timers
            .iter()
            .position(|t| !matches!(t, Timer::RunTimeout { .. }))
        {
            let timer = self.timers.remove(pos);
            self.send(Event::TimerFired { timer });
            return;
        }
        panic!(
            "stuck: nothing running, no task timer pending, run not complete: {:?}",
            self.state()
        );
    }

    fn check_final(&mut self) {
        assert_eq!(self.completed.len(), 1, "exactly one Complete");
        assert!(
            self.running.is_empty(),
            "attempts left running: {:?}",
            self.running
        );
        let state = self.state().clone();
        assert_eq!(state.phase(), RunPhase::Done);
        let n = self.plan.len() as TaskIndex;
        for t in 0..n {
            assert!(
                state.tasks()[t as usize].status.is_terminal(),
                "task {t} not terminal"
            );
        }
        // Outcome rule.
        let allowed = |t: TaskIndex| match state.tasks()[t as usize].status {
            TaskStatus::Succeeded => true,
            TaskStatus::Failed | TaskStatus::TimedOut => self.can_fail(t),
            _ => false,
        };
        // A run timeout that stopped the run fails it (RunOutcome::Failed
        // documents "or the run timed out"), even when every task it
        // interrupted was allowed to fail.
        let expected = if self.cancel_requested {
            RunOutcome::Cancelled
        } else if !self.run_timed_out && (0..n).all(allowed) {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        };
        assert_eq!(self.completed[0], expected, "outcome rule; state {state:?}");
        assert_eq!(state.outcome(), Some(expected));
        // Skips.
        for t in 0..n {
            let deps = self.plan.direct_dependencies(t);
            let blocked = deps.iter().any(|&d| !allowed(d));
            let status = state.tasks()[t as usize].status;
            if blocked {
                assert_eq!(
                    status,
                    TaskStatus::Skipped,
                    "task {t} has an unsatisfied dependency but is {status:?}"
                );
            }
            if status == TaskStatus::Skipped {
                let stopped = self.is_main(t) && state.stop_reason().is_some();
                assert!(
                    blocked || stopped,
                    "task {t} skipped with every dependency satisfied and the run not stopped"
                );
                // Skipped means "never ran": a task with an attempt behind it
                // (even one queued for its retry when the run stopped) ends failed.
                assert!(
                    state.tasks()[t as usize].attempt == 0,
                    "task {t} is skipped but was launched"
                );
            }
        }
        // Stale events after the end change nothing.
        let done = state;
        let history = self.history.clone();
        for e in history.into_iter().rev().take(20) {
            let out = self.sched.handle(e.clone());
            assert!(out.is_empty(), "{e:?} after completion caused {out:?}");
        }
        assert!(self.sched.handle(Event::CancelRequested).is_empty());
        assert_eq!(self.sched.state(), &done);
    }
}

fn drive(spec: RevisionRunSpec, seed: u64, choices: Vec<u32>) {
    let plan = Arc::new(Plan::build(spec).expect("valid_spec builds"));
    let mut d = Driver::new(plan, seed);
    d.send(Event::Start);
    let mut choices = choices.into_iter();
    for _ in 0..MAX_STEPS {
        if !d.completed.is_empty() {
            break;
        }
        match choices.next() {
            Some(c) => d.step(c),
            None => d.default_step(),
        }
    }
    assert!(
        !d.completed.is_empty(),
        "run did not terminate in {MAX_STEPS} steps"
    );
    if let Some(twin) = &d.twin {
        assert_eq!(
            twin.state(),
            d.sched.state(),
            "restored copy ended elsewhere"
        );
    }
    d.check_final();
}

/// The dependency graph with stage barriers expanded, computed from the spec
/// independently of `Plan`: deps[i] are the tasks i waits for.
fn expanded_deps(spec: &RevisionRunSpec) -> Vec<BTreeSet<usize>> {
    let by_name: HashMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let stage = |i: usize| spec.tasks[i].stage.and_then(|s| s.whole()).unwrap_or(0);
    spec.tasks
        .iter()
        .enumerate()
        .map(|(i, t)| match &t.needs {
            Some(needs) => needs.iter().map(|n| by_name[n.as_str()]).collect(),
            None => {
                let mine = stage(i);
                let lower = (0..spec.tasks.len()).map(stage).filter(|s| *s < mine).max();
                match lower {
                    Some(l) => (0..spec.tasks.len()).filter(|&j| stage(j) == l).collect(),
                    None => BTreeSet::new(),
                }
            }
        })
        .collect()
}

/// Any event, well-formed or not: task indices past the plan, attempts
/// never launched, timers of other epochs, outcomes of every kind.
fn hostile_event(tasks: u32) -> impl Strategy<Value = Event> {
    let task = prop_oneof![0..tasks.max(1), Just(tasks), Just(u32::MAX)];
    let attempt = prop_oneof![0u32..4, Just(u32::MAX)];
    let outcome = prop_oneof![
        Just(AttemptOutcome::Succeeded),
        Just(AttemptOutcome::Failed {
            message: "f".into()
        }),
        Just(AttemptOutcome::TimedOut {
            message: "t".into()
        }),
        Just(AttemptOutcome::Cancelled {
            message: "c".into()
        }),
        Just(AttemptOutcome::Lost {
            message: "l".into()
        }),
    ];
    prop_oneof![
        Just(Event::Start),
        Just(Event::CancelRequested),
        Just(Event::RerunRequested { tasks: vec![] }),
        (task.clone(), attempt.clone())
            .prop_map(|(task, attempt)| Event::TaskStarted { task, attempt }),
        (task.clone(), attempt.clone(), outcome).prop_map(|(task, attempt, outcome)| {
            Event::TaskFinished {
                task,
                attempt,
                outcome,
            }
        }),
        (task.clone(), attempt.clone()).prop_map(|(task, attempt)| Event::TimerFired {
            timer: Timer::TaskTimeout { task, attempt }
        }),
        (task, attempt.clone()).prop_map(|(task, attempt)| Event::TimerFired {
            timer: Timer::RetryBackoff { task, attempt }
        }),
        attempt.prop_map(|epoch| Event::TimerFired {
            timer: Timer::RunTimeout { epoch }
        }),
    ]
}

proptest! {

    /// What a store hands back may be replayed, reordered or forged: no
    /// sequence of events makes the scheduler panic, launch a task the plan
    /// does not have, exceed `max_parallel`, or lose its state in a round trip.
    #[test]
    fn arbitrary_event_sequences_never_break_the_scheduler(
        (spec, events) in spec_strategy().prop_flat_map(|spec| {
            let tasks = (spec.tasks.len() + spec.finally.len()) as u32;
            (Just(spec), prop::collection::vec(hostile_event(tasks), 0..80))
        }),
        seed in any::<u64>(),
    ) {
        let plan = Arc::new(Plan::build(spec).unwrap());
        let total = plan.len() as u32;
        let mut s = StageScheduler::new(Arc::clone(&plan), seed);
        for e in events {
            for c in s.handle(e) {
                match c {
                    Command::Launch { task, .. } | Command::Cancel { task, .. } => {
                        prop_assert!(task < total, "{c:?} of a {total}-task plan")
                    }
                    Command::ScheduleTimer { .. } | Command::Complete { .. } => {}
                }
            }
            if let Some(max) = plan.options.max_parallel {
                prop_assert!(s.state().running() <= max);
            }
            let json = serde_json::to_string(s.state()).unwrap();
            let back: SchedulerState = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, s.state());
        }
    }

    #[test]
    fn scheduler_keeps_the_contract(
        spec in spec_strategy(),
        seed in any::<u64>(),
        choices in prop::collection::vec(any::<u32>(), 0..160),
    ) {
        drive(spec, seed, choices);
    }

    #[test]
    fn validation_agrees_with_petgraph_on_cycles(spec in maybe_cyclic_spec(10)) {
        let deps = expanded_deps(&spec);
        let mut g: DiGraph<(), ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..deps.len()).map(|_| g.add_node(())).collect();
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                g.add_edge(nodes[d], nodes[i], ());
            }
        }
        let cyclic = petgraph::algo::is_cyclic_directed(&g);
        match Plan::build(spec.clone()) {
            Ok(plan) => {
                prop_assert!(!cyclic, "a cyclic graph was accepted");
                for (i, ds) in deps.iter().enumerate() {
                    let got: BTreeSet<usize> = plan
                        .direct_dependencies(i as TaskIndex)
                        .into_iter()
                        .map(|d| d as usize)
                        .collect();
                    prop_assert_eq!(&got, ds, "dependencies of task {}", i);
                }
            }
            Err(Error::Invalid(errors)) => {
                prop_assert!(cyclic, "an acyclic graph was rejected: {}", errors);
                for e in &errors.0 {
                    prop_assert!(e.message.contains("dependency cycle"), "{}", e);
                    // The printed path is a real cycle of the expanded graph.
                    let text = e.message.trim_start_matches("dependency cycle: ");
                    let names: Vec<&str> = text
                        .split(" -> ")
                        .filter(|s| !s.starts_with("(end of stage"))
                        .collect();
                    prop_assert!(names.len() >= 2, "{}", e);
                    prop_assert_eq!(names.first(), names.last());
                    let index = |n: &str| spec.tasks.iter().position(|t| t.name == n).unwrap();
                    for w in names.windows(2) {
                        prop_assert!(
                            deps[index(w[1])].contains(&index(w[0])),
                            "{} -> {} is not an edge ({})", w[0], w[1], e
                        );
                    }
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn valid_specs_always_build(spec in spec_strategy()) {
        prop_assert!(Plan::build(spec).is_ok());
    }

    #[test]
    fn commands_round_trip_through_json(spec in spec_strategy(), seed in any::<u64>()) {
        let plan = Arc::new(Plan::build(spec).unwrap());
        let mut s = StageScheduler::new(plan, seed);
        for c in s.handle(Event::Start) {
            let json = serde_json::to_string(&c).unwrap();
            let back: Command = serde_json::from_str(&json).unwrap();
            // Durations travel in whole milliseconds.
            let expect = match c {
                Command::ScheduleTimer { timer, after } => Command::ScheduleTimer {
                    timer,
                    after: Duration::from_millis(after.as_millis() as u64),
                },
                other => other,
            };
            prop_assert_eq!(back, expect);
        }
    }
}

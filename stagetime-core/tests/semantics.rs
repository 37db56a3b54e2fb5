#![cfg(feature = "test-util")]
//! One focused test per rule of DESIGN.md "Semantics", plus validation.
//!
//! Scheduler rules are driven by hand through the pure `StageScheduler`;
//! submit and concurrency groups go through `RunControl` / `Engine`.

use std::sync::Arc;
use std::time::Duration;

use stagetime_core::control::RunControl;
use stagetime_core::engine::{Clock, Engine, EngineConfig};
use stagetime_core::memory::MemoryStore;
use stagetime_core::plan::{Plan, TaskIndex};
use stagetime_core::scheduler::{
    AttemptOutcome, Command, Event, RunOutcome, StageScheduler, StopReason, TaskStatus, Timer,
};
use stagetime_core::spec::{RevisionRunSpec, parse_document};
use stagetime_core::store::{RunFilter, RunId, RunState, Store, Work};
use stagetime_core::testkit::InstantBackend;
use stagetime_core::{Error, ErrorKind, FieldErrors};

/// A scheduler over a YAML document, addressed by task name.
struct Run {
    plan: Arc<Plan>,
    s: StageScheduler,
}

impl Run {
    fn new(yaml: &str) -> Self {
        Self::with_seed(yaml, 42)
    }

    fn with_seed(yaml: &str, seed: u64) -> Self {
        let spec: RevisionRunSpec = yaml_serde::from_str(yaml).unwrap();
        let plan = Arc::new(Plan::build(spec).unwrap());
        Run {
            s: StageScheduler::new(Arc::clone(&plan), seed),
            plan,
        }
    }

    fn ix(&self, name: &str) -> TaskIndex {
        self.plan.index_of(name).unwrap()
    }

    fn name(&self, i: TaskIndex) -> String {
        self.plan.task(i).name().to_string()
    }

    fn ev(&mut self, e: Event) -> Out {
        let cmds = self.s.handle(e);
        let names = |want_launch: bool| {
            cmds.iter()
                .filter_map(|c| match (c, want_launch) {
                    (Command::Launch { task, attempt }, true)
                    | (Command::Cancel { task, attempt }, false) => {
                        Some(format!("{}#{attempt}", self.plan.task(*task).name()))
                    }
                    _ => None,
                })
                .collect::<Vec<String>>()
        };
        Out {
            launched: names(true),
            cancelled: names(false),
            cmds,
        }
    }

    fn start(&mut self) -> Out {
        self.ev(Event::Start)
    }

    fn end(&mut self, name: &str, attempt: u32, outcome: AttemptOutcome) -> Out {
        let task = self.ix(name);
        self.ev(Event::TaskFinished {
            task,
            attempt,
            outcome,
        })
    }

    fn ok(&mut self, name: &str, attempt: u32) -> Out {
        self.end(name, attempt, AttemptOutcome::Succeeded)
    }

    fn fail(&mut self, name: &str, attempt: u32) -> Out {
        self.end(
            name,
            attempt,
            AttemptOutcome::Failed {
                message: "exit 1".into(),
            },
        )
    }

    fn started(&mut self, name: &str, attempt: u32) -> Out {
        let task = self.ix(name);
        self.ev(Event::TaskStarted { task, attempt })
    }

    fn fire(&mut self, timer: Timer) -> Out {
        self.ev(Event::TimerFired { timer })
    }

    fn status(&self, name: &str) -> TaskStatus {
        self.s.state().tasks()[self.ix(name) as usize].status
    }
}

/// The commands one event caused, with launches and cancels as `name#attempt`.
#[derive(Debug)]
struct Out {
    cmds: Vec<Command>,
    launched: Vec<String>,
    cancelled: Vec<String>,
}

impl Out {
    fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    fn timers(&self) -> Vec<(Timer, Duration)> {
        self.cmds
            .iter()
            .filter_map(|c| match c {
                Command::ScheduleTimer { timer, after } => Some((*timer, *after)),
                _ => None,
            })
            .collect()
    }

    fn completed(&self) -> Option<RunOutcome> {
        self.cmds.iter().find_map(|c| match c {
            Command::Complete { outcome } => Some(*outcome),
            _ => None,
        })
    }
}

fn field_errors(yaml: &str) -> FieldErrors {
    let spec: RevisionRunSpec = yaml_serde::from_str(yaml).unwrap();
    match Plan::build(spec) {
        Err(Error::Invalid(e)) => e,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------- stages

#[test]
fn stage_barrier_waits_for_the_nearest_lower_stage_even_with_gaps() {
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [
            {name: a, stage: 0, command: x}, {name: b, stage: 0, command: x},
            {name: c, stage: 5, command: x}, {name: e, stage: 5, command: x},
            {name: d, stage: 10, command: x}]}",
    );
    assert_eq!(r.start().launched, ["a#1", "b#1"]);
    assert!(
        r.ok("a", 1).launched.is_empty(),
        "stage 5 waits for all of stage 0"
    );
    assert_eq!(r.ok("b", 1).launched, ["c#1", "e#1"]);
    assert!(r.ok("c", 1).launched.is_empty());
    assert_eq!(r.ok("e", 1).launched, ["d#1"]);
    // Stage 10 depends on stage 5 only, not on stage 0.
    let deps: Vec<String> = r
        .plan
        .direct_dependencies(r.ix("d"))
        .into_iter()
        .map(|i| r.name(i))
        .collect();
    assert_eq!(deps, ["c", "e"]);
    assert_eq!(r.ok("d", 1).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn needs_replaces_the_stage_barrier() {
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [
            {name: slow, stage: 0, command: x}, {name: quick, stage: 0, command: x},
            {name: after-quick, stage: 1, needs: [quick], command: x},
            {name: barrier, stage: 1, command: x},
            {name: free, stage: 3, needs: [], command: x}]}",
    );
    // `needs: []` starts at once, whatever its stage.
    assert_eq!(r.start().launched, ["slow#1", "quick#1", "free#1"]);
    // `after-quick` starts while `slow` still runs; `barrier` does not.
    assert_eq!(r.ok("quick", 1).launched, ["after-quick#1"]);
    assert_eq!(r.status("barrier"), TaskStatus::Waiting);
    assert_eq!(r.ok("slow", 1).launched, ["barrier#1"]);
}

#[test]
fn can_fail_dependency_is_satisfied_and_the_run_succeeds() {
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [
            {name: flaky, can_fail: true, command: x},
            {name: slow, can_fail: true, command: x},
            {name: next, stage: 1, command: x}]}",
    );
    r.start();
    assert!(r.fail("flaky", 1).launched.is_empty());
    let timed_out = AttemptOutcome::TimedOut {
        message: "too slow".into(),
    };
    assert_eq!(r.end("slow", 1, timed_out).launched, ["next#1"]);
    assert_eq!(r.status("flaky"), TaskStatus::Failed);
    assert_eq!(r.status("slow"), TaskStatus::TimedOut);
    assert_eq!(r.ok("next", 1).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn unsatisfied_dependency_skips_its_dependents_transitively() {
    // Finally tasks show skip propagation on its own (a failing finally task
    // does not stop the others).
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [{name: a, command: x}],
          finally: [{name: f1, command: x}, {name: f2, needs: [f1], command: x},
                    {name: f3, needs: [f2], command: x}, {name: f4, command: x}]}",
    );
    r.start();
    assert_eq!(r.ok("a", 1).launched, ["f1#1", "f4#1"]);
    let cmds = r.fail("f1", 1);
    assert!(cmds.launched.is_empty());
    assert_eq!(r.status("f2"), TaskStatus::Skipped);
    assert_eq!(r.status("f3"), TaskStatus::Skipped);
    assert_eq!(r.status("f4"), TaskStatus::Running);
    assert_eq!(r.ok("f4", 1).completed(), Some(RunOutcome::Failed));

    // Main tasks: everything behind a failed task is skipped, transitively.
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [{name: a, command: x},
            {name: b, stage: 1, command: x}, {name: c, stage: 2, needs: [b], command: x}]}",
    );
    r.start();
    assert_eq!(r.fail("a", 1).completed(), Some(RunOutcome::Failed));
    assert_eq!(r.status("b"), TaskStatus::Skipped);
    assert_eq!(r.status("c"), TaskStatus::Skipped);
}

#[test]
fn failure_stops_new_launches_and_running_tasks_finish() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {max_parallel: 2},
          tasks: [{name: a, command: x}, {name: b, command: x}, {name: queued, command: x},
                  {name: later, stage: 1, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    assert_eq!(r.start().launched, ["a#1", "b#1"]);
    let cmds = r.fail("a", 1);
    assert!(cmds.is_empty(), "no launch, no cancel: {cmds:?}");
    assert_eq!(r.s.state().stop_reason(), Some(StopReason::Failure));
    assert_eq!(r.status("queued"), TaskStatus::Skipped);
    assert_eq!(r.status("later"), TaskStatus::Skipped);
    assert_eq!(r.status("b"), TaskStatus::Running);
    // b finishes normally; only then does finally run.
    assert_eq!(r.ok("b", 1).launched, ["fin#1"]);
    assert_eq!(r.status("b"), TaskStatus::Succeeded);
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Failed));
}

#[test]
fn fail_fast_cancels_running_tasks() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {fail_fast: true},
          tasks: [{name: a, command: x}, {name: b, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    r.start();
    let cmds = r.fail("a", 1);
    assert_eq!(cmds.cancelled, ["b#1"]);
    assert_eq!(cmds.launched, ["fin#1"]);
    assert_eq!(r.status("b"), TaskStatus::Cancelled);
    // The backend's report of the cancelled attempt changes nothing.
    let late = r.end(
        "b",
        1,
        AttemptOutcome::Cancelled {
            message: "cancelled".into(),
        },
    );
    assert!(late.is_empty());
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Failed));
}

#[test]
fn finally_runs_whatever_happened_and_waits_only_for_its_needs() {
    let yaml = "{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, command: x}],
          finally: [{name: f1, command: x}, {name: f2, needs: [f1], command: x},
                    {name: f3, can_fail: true, command: x}]}";
    // After success.
    let mut r = Run::new(yaml);
    r.start();
    assert!(
        r.ok("a", 1).launched.is_empty(),
        "finally waits for every main task"
    );
    assert_eq!(r.ok("b", 1).launched, ["f1#1", "f3#1"]);
    assert_eq!(r.ok("f1", 1).launched, ["f2#1"]);
    assert!(r.fail("f3", 1).completed().is_none());
    assert_eq!(
        r.ok("f2", 1).completed(),
        Some(RunOutcome::Succeeded),
        "a can_fail finally failure keeps the run green"
    );
    // After a failure.
    let mut r = Run::new(yaml);
    r.start();
    r.fail("a", 1);
    assert_eq!(r.ok("b", 1).launched, ["f1#1", "f3#1"]);
    // A finally failure that is not allowed fails the run.
    let mut r = Run::new(yaml);
    r.start();
    r.ok("a", 1);
    r.ok("b", 1);
    r.ok("f3", 1);
    r.fail("f1", 1);
    assert_eq!(r.status("f2"), TaskStatus::Skipped);
    assert_eq!(r.s.state().outcome(), Some(RunOutcome::Failed));
}

// ---------------------------------------------------------------- retries and timeouts

#[test]
fn retries_back_off_doubling_capped_and_jittered() {
    let yaml = "{repo: r, commit: c, options: {retry_delay_max: 25s},
          tasks: [{name: t, retries: 4, retry_delay: 10s, command: x}]}";
    let mut r = Run::new(yaml);
    assert_eq!(r.start().launched, ["t#1"]);
    let t = r.ix("t");
    let mut delays = Vec::new();
    for (attempt, nominal) in [(1u32, 10u64), (2, 20), (3, 25), (4, 25)] {
        let cmds = r.fail("t", attempt);
        assert!(cmds.launched.is_empty(), "no relaunch before the backoff");
        assert_eq!(r.status("t"), TaskStatus::Backoff);
        let [(timer, after)] = cmds.timers()[..] else {
            panic!("one timer expected: {cmds:?}")
        };
        assert_eq!(
            timer,
            Timer::RetryBackoff {
                task: t,
                attempt: attempt + 1
            }
        );
        let d = Duration::from_secs(nominal);
        assert!(
            after <= d && after >= d.mul_f64(0.9),
            "attempt {}: {after:?} not in [0.9, 1] x {d:?}",
            attempt + 1
        );
        delays.push(after);
        assert_eq!(r.fire(timer).launched, [format!("t#{}", attempt + 1)]);
    }
    assert_eq!(r.fail("t", 5).completed(), Some(RunOutcome::Failed));
    assert_eq!(r.status("t"), TaskStatus::Failed);

    // The jitter is seeded: the same seed replays the same delays.
    let mut again = Run::new(yaml);
    again.start();
    let first = again.fail("t", 1).timers()[0].1;
    assert_eq!(first, delays[0]);
}

#[test]
fn retry_without_delay_relaunches_at_once() {
    let mut r = Run::new("{repo: r, commit: c, tasks: [{name: t, retries: 1, command: x}]}");
    r.start();
    assert_eq!(r.fail("t", 1).launched, ["t#2"]);
    assert_eq!(r.ok("t", 2).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn timeout_counts_as_failure_and_is_retried() {
    let mut r =
        Run::new("{repo: r, commit: c, tasks: [{name: t, retries: 1, timeout: 30s, command: x}]}");
    r.start();
    let t = r.ix("t");
    let cmds = r.started("t", 1);
    assert_eq!(
        cmds.timers(),
        [(
            Timer::TaskTimeout {
                task: t,
                attempt: 1
            },
            Duration::from_secs(30)
        )]
    );
    let cmds = r.fire(Timer::TaskTimeout {
        task: t,
        attempt: 1,
    });
    assert_eq!(
        cmds.cancelled,
        ["t#1"],
        "the timed-out attempt is cancelled"
    );
    assert_eq!(cmds.launched, ["t#2"], "and retried");
    r.started("t", 2);
    let cmds = r.fire(Timer::TaskTimeout {
        task: t,
        attempt: 2,
    });
    assert_eq!(cmds.completed(), Some(RunOutcome::Failed));
    assert_eq!(r.status("t"), TaskStatus::TimedOut);
    // A timeout reported by the backend is retried the same way.
    let mut r = Run::new("{repo: r, commit: c, tasks: [{name: t, retries: 1, command: x}]}");
    r.start();
    let cmds = r.end(
        "t",
        1,
        AttemptOutcome::TimedOut {
            message: "deadline".into(),
        },
    );
    assert_eq!(cmds.launched, ["t#2"]);
}

fn lost(r: &mut Run, name: &str, attempt: u32) -> Out {
    r.end(
        name,
        attempt,
        AttemptOutcome::Lost {
            message: "its worker died".into(),
        },
    )
}

#[test]
fn lost_attempts_are_retried_apart_from_the_tasks_own_retries() {
    // No retries of its own: two lost attempts (the default budget) are
    // relaunched at once, the third lost attempt fails the task.
    let mut r = Run::new("{repo: r, commit: c, tasks: [{name: t, command: x}]}");
    r.start();
    assert_eq!(lost(&mut r, "t", 1).launched, ["t#2"]);
    assert_eq!(r.status("t"), TaskStatus::Running);
    let st = &r.s.state().tasks()[0];
    assert_eq!(
        (st.lost, st.lost_reason.as_deref()),
        (1, Some("its worker died"))
    );
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .contains("infrastructure failure, 1 of 2"),
        "{:?}",
        st.message
    );
    assert_eq!(lost(&mut r, "t", 2).launched, ["t#3"]);
    let out = lost(&mut r, "t", 3);
    assert!(out.launched.is_empty());
    assert_eq!(out.completed(), Some(RunOutcome::Failed));
    assert_eq!(r.status("t"), TaskStatus::Failed);

    // With retries of its own, lost attempts leave them untouched: after one
    // lost attempt, two failures are still retried, the third ends it.
    let mut r = Run::new("{repo: r, commit: c, tasks: [{name: t, retries: 2, command: x}]}");
    r.start();
    assert_eq!(lost(&mut r, "t", 1).launched, ["t#2"]);
    assert_eq!(r.fail("t", 2).launched, ["t#3"]);
    assert_eq!(r.fail("t", 3).launched, ["t#4"]);
    assert_eq!(r.fail("t", 4).completed(), Some(RunOutcome::Failed));

    // A lost attempt past the budget is a failure, which the task's own
    // retries then cover.
    let mut r = Run::new(
        "{repo: r, commit: c, options: {lost_retries: 0}, tasks: [{name: t, retries: 1, command: x}]}",
    );
    r.start();
    assert_eq!(lost(&mut r, "t", 1).launched, ["t#2"]);
    assert_eq!(r.s.state().tasks()[0].lost, 0);
    assert_eq!(r.ok("t", 2).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn a_recorded_success_is_never_rerun_by_a_late_lost_report() {
    let mut r =
        Run::new("{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, command: x}]}");
    r.start();
    r.ok("a", 1);
    // The same attempt reported lost afterwards (a second worker finding
    // its worker dead) is stale: nothing is launched, the success stands.
    let out = lost(&mut r, "a", 1);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(r.status("a"), TaskStatus::Succeeded);
    assert_eq!(r.ok("b", 1).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn lost_attempts_of_a_stopped_run_are_not_retried() {
    let mut r =
        Run::new("{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, command: x}]}");
    r.start();
    r.fail("a", 1);
    let out = lost(&mut r, "b", 1);
    assert!(out.launched.is_empty());
    assert_eq!(r.status("b"), TaskStatus::Failed);
    assert_eq!(out.completed(), Some(RunOutcome::Failed));
}

#[test]
fn lost_retries_is_bounded() {
    let e = field_errors(
        "{repo: r, commit: c, options: {lost_retries: 101}, tasks: [{name: t, command: x}]}",
    );
    assert!(e.to_string().contains("options.lost_retries"), "{e}");
    assert!(e.to_string().contains("exceeds the maximum of 100"), "{e}");
}

#[test]
fn cancelled_attempt_is_never_retried() {
    let mut r = Run::new("{repo: r, commit: c, tasks: [{name: t, retries: 3, command: x}]}");
    r.start();
    let cmds = r.end(
        "t",
        1,
        AttemptOutcome::Cancelled {
            message: "deleted by hand".into(),
        },
    );
    assert!(cmds.launched.is_empty());
    assert_eq!(r.status("t"), TaskStatus::Cancelled);
    // Nobody cancelled the run, so it failed.
    assert_eq!(cmds.completed(), Some(RunOutcome::Failed));
}

#[test]
fn task_timeout_starts_when_the_backend_confirms_the_launch() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {max_parallel: 1},
          tasks: [{name: a, timeout: 1m, command: x}, {name: b, timeout: 1m, command: x}]}",
    );
    let cmds = r.start();
    assert!(
        cmds.timers().is_empty(),
        "no timer while only queued or launched"
    );
    assert_eq!(r.started("a", 1).timers().len(), 1);
    assert!(
        r.started("a", 1).timers().is_empty(),
        "a repeated TaskStarted adds nothing"
    );
    // b was queued behind max_parallel; its clock starts with its own launch.
    assert_eq!(r.ok("a", 1).launched, ["b#1"]);
    let b = r.ix("b");
    assert_eq!(
        r.started("b", 1).timers(),
        [(
            Timer::TaskTimeout {
                task: b,
                attempt: 1
            },
            Duration::from_secs(60)
        )]
    );
    // A stale timeout of a finished attempt is ignored.
    let a = r.ix("a");
    assert!(
        r.fire(Timer::TaskTimeout {
            task: a,
            attempt: 1
        })
        .is_empty()
    );
}

#[test]
fn run_timeout_cancels_running_skips_pending_and_fails_the_run() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {timeout: 1h},
          tasks: [{name: a, command: x}, {name: b, stage: 1, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    let cmds = r.start();
    assert_eq!(
        cmds.timers(),
        [(Timer::RunTimeout { epoch: 0 }, Duration::from_secs(3600))]
    );
    let cmds = r.fire(Timer::RunTimeout { epoch: 0 });
    assert_eq!(cmds.cancelled, ["a#1"]);
    assert_eq!(cmds.launched, ["fin#1"]);
    assert_eq!(r.status("b"), TaskStatus::Skipped);
    assert_eq!(r.s.state().stop_reason(), Some(StopReason::Timeout));
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Failed));
}

#[test]
fn cancel_run_cancels_running_skips_pending_runs_finally_and_ends_cancelled() {
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [{name: a, command: x}, {name: b, command: x},
            {name: c, stage: 1, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    r.start();
    r.ok("a", 1);
    let cmds = r.ev(Event::CancelRequested);
    assert_eq!(cmds.cancelled, ["b#1"]);
    assert_eq!(cmds.launched, ["fin#1"]);
    assert_eq!(r.status("a"), TaskStatus::Succeeded);
    assert_eq!(r.status("b"), TaskStatus::Cancelled);
    assert_eq!(r.status("c"), TaskStatus::Skipped);
    assert!(
        r.ev(Event::CancelRequested).is_empty(),
        "cancel is idempotent"
    );
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Cancelled));

    // Cancelled while finally runs: finally finishes, the run is Cancelled.
    let mut r = Run::new(
        "{repo: r, commit: c, tasks: [{name: a, command: x}], finally: [{name: fin, command: x}]}",
    );
    r.start();
    r.ok("a", 1);
    assert!(r.ev(Event::CancelRequested).cancelled.is_empty());
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Cancelled));
}

#[test]
fn max_parallel_bounds_running_attempts() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {max_parallel: 2},
          tasks: [{name: a, command: x}, {name: b, command: x}, {name: c, command: x},
                  {name: d, command: x}, {name: e, command: x}]}",
    );
    assert_eq!(r.start().launched, ["a#1", "b#1"]);
    assert_eq!(r.s.state().running(), 2);
    assert_eq!(r.ok("b", 1).launched, ["c#1"]);
    assert_eq!(r.ok("a", 1).launched, ["d#1"]);
    assert_eq!(r.ok("c", 1).launched, ["e#1"]);
    assert!(r.ok("d", 1).launched.is_empty());
    assert_eq!(r.ok("e", 1).completed(), Some(RunOutcome::Succeeded));
}

#[test]
fn rerun_keeps_succeeded_tasks_and_relaunches_the_rest_with_higher_attempts() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {timeout: 1h},
          tasks: [{name: a, command: x}, {name: b, command: x}, {name: c, stage: 1, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    r.start();
    r.ok("a", 1);
    r.fail("b", 1);
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Failed));
    assert_eq!(r.status("c"), TaskStatus::Skipped);

    let cmds = r.ev(Event::RerunRequested { tasks: vec![] });
    assert_eq!(
        cmds.launched,
        ["b#2"],
        "a is kept, b runs again as attempt 2"
    );
    assert_eq!(
        cmds.timers(),
        [(Timer::RunTimeout { epoch: 1 }, Duration::from_secs(3600))]
    );
    assert_eq!(r.status("a"), TaskStatus::Succeeded);
    // The first run's timeout cannot stop the rerun.
    assert!(r.fire(Timer::RunTimeout { epoch: 0 }).is_empty());
    assert_eq!(r.ok("b", 2).launched, ["c#1"]);
    assert_eq!(r.ok("c", 1).launched, ["fin#2"]);
    assert_eq!(r.ok("fin", 2).completed(), Some(RunOutcome::Succeeded));
    // A rerun of a run that has not finished does nothing.
    let mut busy = Run::new("{repo: r, commit: c, tasks: [{name: a, command: x}]}");
    busy.start();
    assert!(busy.ev(Event::RerunRequested { tasks: vec![] }).is_empty());
}

/// `/retest NAME`: a rerun naming a succeeded task runs it again with
/// everything downstream of it (its `needs` dependents, the later stages),
/// and keeps the other succeeded tasks.
#[test]
fn rerun_of_named_tasks_runs_them_and_what_depends_on_them() {
    let mut r = Run::new(
        "{repo: r, commit: c,
          tasks: [{name: a, command: x}, {name: b, command: x},
                  {name: n, needs: [b], command: x},
                  {name: c, stage: 1, command: x}],
          finally: [{name: fin, command: x}]}",
    );
    r.start();
    r.ok("a", 1);
    r.ok("b", 1);
    r.ok("n", 1);
    r.ok("c", 1);
    assert_eq!(r.ok("fin", 1).completed(), Some(RunOutcome::Succeeded));

    let b = r.s.plan().index_of("b").unwrap();
    let cmds = r.ev(Event::RerunRequested { tasks: vec![b] });
    assert_eq!(cmds.launched, ["b#2"], "a is kept; b runs again first");
    assert_eq!(r.status("a"), TaskStatus::Succeeded);
    assert_eq!(r.status("n"), TaskStatus::Waiting, "n needs b");
    assert_eq!(r.status("c"), TaskStatus::Waiting, "c is a later stage");
    assert_eq!(r.ok("b", 2).launched, ["n#2"]);
    assert_eq!(r.ok("n", 2).launched, ["c#2"]);
    assert_eq!(r.ok("c", 2).launched, ["fin#2"]);
    assert_eq!(r.ok("fin", 2).completed(), Some(RunOutcome::Succeeded));
}

/// A task whose retry is queued (no `retry_delay`) behind `max_parallel`
/// is `Ready`; when the run stops it ends `Failed` (attempt 1 ran and
/// failed), like the same task in `Backoff`, not `Skipped` ("never ran").
#[test]
fn retry_waiting_for_a_slot_is_not_skipped_when_the_run_stops() {
    let mut r = Run::new(
        "{repo: r, commit: c, options: {max_parallel: 1},
          tasks: [{name: t0, retries: 1, command: x}, {name: t1, command: x}]}",
    );
    assert_eq!(r.start().launched, ["t0#1"]);
    // t0 fails; its retry is queued behind t1, which takes the only slot.
    assert_eq!(r.fail("t0", 1).launched, ["t1#1"]);
    r.ev(Event::CancelRequested);
    assert_eq!(
        r.status("t0"),
        TaskStatus::Failed,
        "t0 ran and failed; it must not be reported as skipped"
    );
}

// ---------------------------------------------------------------- submit and groups

fn spec(commit: &str, group: Option<&str>, command: &str) -> RevisionRunSpec {
    let mut s = stagetime_core::testkit::spec_with(
        commit,
        vec![stagetime_core::testkit::command_task("t", 0, command)],
    );
    if let Some(g) = group {
        s.options.concurrency_group = Some(g.into());
        s.options.cancel_in_progress = true;
    }
    s
}

#[tokio::test]
async fn submitting_the_same_run_twice_yields_one_run() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = RunControl::new(Arc::clone(&store));
    let first = control
        .submit(spec("abc", None, "true"), None)
        .await
        .unwrap();
    let second = control
        .submit(spec("abc", None, "true"), None)
        .await
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    // A different commit is a different run.
    let other = control
        .submit(spec("def", None, "true"), None)
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    // Same explicit id, through the engine: one run.
    let engine = Engine::new(Arc::clone(&store), Arc::new(InstantBackend::new()));
    let mut with_id = spec("ghi", None, "true");
    with_id.id = Some("my-run".into());
    assert!(engine.submit(with_id.clone()).await.unwrap().created);
    let again = engine.submit(with_id).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.id.as_str(), "my-run");
    let page = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(page.runs.len(), 3);
}

#[tokio::test]
async fn another_document_under_an_existing_id_is_refused_and_stores_nothing() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = RunControl::new(Arc::clone(&store));
    let mut first = spec("abc", None, "true");
    first.id = Some("fixed-id".into());
    control.submit(first.clone(), None).await.unwrap();
    let mut changed = first.clone();
    changed.tasks[0].command = Some("make deploy".into());
    let err = control.submit(changed, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.to_string().contains("run fixed-id"), "{err}");
    let stored = control.get(&RunId::new("fixed-id").unwrap()).await.unwrap();
    assert_eq!(stored.spec.tasks[0].command.as_deref(), Some("true"));
    assert_eq!(stored.version, 1, "the stored run is untouched");
    // The same document again is still an idempotent repeat.
    assert!(!control.submit(first, None).await.unwrap().created);
}

#[tokio::test]
async fn a_repeated_submission_cancels_older_runs_of_its_group_but_never_newer_ones() {
    /// Each reading is one ms later than the one before.
    struct Ticking(std::sync::atomic::AtomicU64);
    impl Clock for Ticking {
        fn now_ms(&self) -> u64 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        }
    }
    /// Takes every queued item; the runs asked to cancel, sorted.
    async fn cancels_queued(store: &Arc<dyn Store>) -> Vec<String> {
        let claimed = store
            .claim("test", 100, u64::MAX / 2, Duration::ZERO)
            .await
            .unwrap();
        let tokens: Vec<_> = claimed.iter().map(|c| c.token.clone()).collect();
        store.ack(&tokens).await.unwrap();
        let mut runs: Vec<String> = claimed
            .into_iter()
            .filter(|c| {
                matches!(
                    c.item.work,
                    Work::Event {
                        event: Event::CancelRequested
                    }
                )
            })
            .map(|c| c.item.run.to_string())
            .collect();
        runs.sort();
        runs
    }
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = RunControl::new(Arc::clone(&store))
        .with_clock(Arc::new(Ticking(std::sync::atomic::AtomicU64::new(1_000))));
    let submit =
        |commit: &'static str| control.submit(spec(commit, Some("demo/main"), "true"), None);
    let oldest = submit("c1").await.unwrap().id.to_string();
    let middle = submit("c2").await.unwrap().id.to_string();
    assert_eq!(cancels_queued(&store).await, std::slice::from_ref(&oldest));
    let newest = submit("c3").await.unwrap().id.to_string();
    let mut older = vec![oldest.clone(), middle];
    older.sort();
    assert_eq!(cancels_queued(&store).await, older);
    // A retry of c2's submission cancels c1 again, never the newer c3.
    assert!(!submit("c2").await.unwrap().created);
    let again = cancels_queued(&store).await;
    assert_eq!(again, [oldest]);
    assert!(!again.contains(&newest));
}

#[tokio::test]
async fn concurrency_group_with_cancel_in_progress_cancels_the_older_run() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let backend = InstantBackend::new();
    let engine = Arc::new(
        Engine::new(Arc::clone(&store), Arc::new(backend.clone())).with_config(EngineConfig {
            consumer: "semantics".into(),
            claim_wait: Duration::from_millis(50),
            purge_every: None,
            reconcile_on_start: false,
            ..EngineConfig::default()
        }),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(Arc::clone(&engine).run(async {
        let _ = stop_rx.await;
    }));
    let older = engine
        .submit(spec("old", Some("demo/main"), "sleep 100"))
        .await
        .unwrap();
    // Wait until the older run's task is launched (it hangs).
    let mut updates = engine.subscribe();
    loop {
        let rec = store.load_run(&older.id).await.unwrap();
        if rec.state == RunState::Running && backend.total_created() == 1 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), updates.recv()).await;
    }
    let newer = engine
        .submit(spec("new", Some("demo/main"), "true"))
        .await
        .unwrap();
    let old_rec = engine.wait_finished(&older.id).await.unwrap();
    let new_rec = engine.wait_finished(&newer.id).await.unwrap();
    assert_eq!(old_rec.state, RunState::Cancelled);
    assert_eq!(old_rec.scheduler.tasks()[0].status, TaskStatus::Cancelled);
    assert_eq!(new_rec.state, RunState::Succeeded);
    let _ = stop_tx.send(());
    handle.await.unwrap().unwrap();
}

// ---------------------------------------------------------------- validation

#[test]
fn validation_reports_every_problem_at_once_with_paths() {
    let errors = field_errors(
        r#"{repo: r, commit: c, options: {timeout: soon},
            tasks: [
              {name: build, command: x},
              {name: build, command: x},
              {name: Bad_Name, command: x},
              {name: test, needs: [biuld], command: x},
              {name: neg, stage: -1, command: x},
              {name: frac, stage: 1.5, command: x},
              {name: slow, timeout: "5 parsecs", retry_delay: 0s, command: x}]}"#,
    );
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for (path, words) in [
        ("tasks[1].name", "duplicate"),
        ("tasks[2].name", "Bad_Name"),
        ("tasks[3].needs[0]", "unknown task \"biuld\""),
        ("tasks[4].stage", "-1"),
        ("tasks[5].stage", "1.5"),
        ("tasks[6].timeout", "5 parsecs"),
        ("tasks[6].retry_delay", "longer than zero"),
        ("options.timeout", "soon"),
    ] {
        let e = errors
            .0
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}; got {paths:?}"));
        assert!(e.message.contains(words), "{path}: {}", e.message);
    }
    assert_eq!(errors.0.len(), 8, "exactly these problems: {errors}");
}

#[test]
fn validation_prints_a_cycle_as_a_path() {
    let errors = field_errors(
        "{repo: r, commit: c, tasks: [{name: a, needs: [b], command: x},
            {name: b, needs: [c], command: x}, {name: c, needs: [a], command: x},
            {name: ok, command: x}]}",
    );
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!(e.path, "tasks[0].needs");
    let path = e.message.strip_prefix("dependency cycle: ").unwrap();
    let names: Vec<&str> = path.split(" -> ").collect();
    assert_eq!(names.len(), 4, "{path}");
    assert_eq!(names.first(), names.last());
    let mut members = names[..3].to_vec();
    members.sort();
    assert_eq!(members, ["a", "b", "c"]);
    // Each step runs before the next: the next one needs it.
    let needs = |x: &str| match x {
        "a" => "b",
        "b" => "c",
        _ => "a",
    };
    for w in names.windows(2) {
        assert_eq!(needs(w[1]), w[0], "{path}");
    }

    // A cycle through a stage barrier names the barrier.
    let errors = field_errors(
        "{repo: r, commit: c, tasks: [{name: a, stage: 0, needs: [b], command: x},
            {name: b, stage: 1, command: x}]}",
    );
    assert!(
        errors.0[0].message.contains("(end of stage 0)"),
        "{}",
        errors.0[0]
    );
}

#[test]
fn validation_requires_repo_commit_and_tasks() {
    let errors = field_errors("{repo: '', tasks: []}");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["repo", "commit", "tasks"], "{errors}");
}

#[test]
fn unknown_key_is_named() {
    let err = parse_document(
        "run.yaml",
        "{repo: r, commit: c, tasks: [{name: a, can_fial: true, command: x}]}",
    )
    .unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("can_fial"), "{text}");
    assert!(text.contains("run.yaml"), "{text}");
}

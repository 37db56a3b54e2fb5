//! Embedding: the pure stage scheduler driven by hand — no engine, no store,
//! no async runtime. Events go in, commands come out; here every launched
//! attempt "runs" at once and the first attempt of `test` fails, to show a
//! retry.
//!
//! `cargo run -p stagetime-core --example embed_scheduler`

use std::collections::VecDeque;
use std::sync::Arc;

use stagetime_core::plan::Plan;
use stagetime_core::{
    AttemptOutcome, Command, Event, RevisionRunSpec, RunOutcome, StageScheduler, TaskSpec,
};

fn main() -> stagetime_core::Result<()> {
    let spec = RevisionRunSpec::new("demo", "4f1c2e9")
        .task(TaskSpec::new("compile").command("make"))
        .task(
            TaskSpec::new("test")
                .stage(1)
                .retries(1)
                .command("make test"),
        )
        .task(TaskSpec::new("docs").stage(1).command("make docs"))
        .finally_task(TaskSpec::new("notify").command("notify"));
    let plan = Arc::new(Plan::build(spec)?);
    let mut scheduler = StageScheduler::new(Arc::clone(&plan), 1);

    let mut events = VecDeque::from([Event::Start]);
    let mut outcome = None;
    while let Some(event) = events.pop_front() {
        for command in scheduler.handle(event) {
            match command {
                Command::Launch { task, attempt } => {
                    let name = plan.task(task).name();
                    println!("launch {name} (attempt {attempt})");
                    let result = if name == "test" && attempt == 1 {
                        AttemptOutcome::Failed {
                            message: "one flaky test".into(),
                        }
                    } else {
                        AttemptOutcome::Succeeded
                    };
                    events.push_back(Event::TaskStarted { task, attempt });
                    events.push_back(Event::TaskFinished {
                        task,
                        attempt,
                        outcome: result,
                    });
                }
                // A real driver sleeps `after`; this one fires timers at once
                // (no task here has a timeout: only retry delays come here).
                Command::ScheduleTimer { timer, after } => {
                    println!("timer {timer:?} after {after:?}: firing now");
                    events.push_back(Event::TimerFired { timer });
                }
                Command::Cancel { task, attempt } => {
                    println!("cancel {} (attempt {attempt})", plan.task(task).name());
                }
                Command::Complete { outcome: o } => outcome = Some(o),
            }
        }
    }
    println!("run finished: {outcome:?}");
    for (task, state) in plan.tasks.iter().zip(scheduler.state().tasks()) {
        println!(
            "  {:<8} {:?} after {} attempt(s)",
            task.name(),
            state.status,
            state.attempt
        );
    }
    assert_eq!(outcome, Some(RunOutcome::Succeeded));
    Ok(())
}

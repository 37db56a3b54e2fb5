//! Scheduler benchmarks: validation (`Plan::build`) and a full drive to
//! completion with instant outcomes, for layered random DAGs of 1k–1M tasks.
//!
//! Run: `cargo bench -p stagetime-core --features test-util --bench scheduler`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stagetime_core::plan::Plan;
use stagetime_core::scheduler::{AttemptOutcome, Command, Event, RunOutcome, StageScheduler};
use stagetime_core::testkit::strategies::layered_spec;

/// Tasks per stage and how often a task also has `needs` (every n-th task).
const WIDTH: usize = 100;
const NEEDS_EVERY: usize = 7;
const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// Drives a fresh scheduler to completion, answering every launch with success.
fn drive(plan: Arc<Plan>) -> RunOutcome {
    let mut s = StageScheduler::new(plan, 1);
    let mut out = Vec::with_capacity(1024);
    let mut queue: Vec<(u32, u32)> = Vec::with_capacity(1024);
    s.handle_into(Event::Start, &mut out);
    loop {
        for c in out.drain(..) {
            match c {
                Command::Launch { task, attempt } => queue.push((task, attempt)),
                Command::Complete { outcome } => return outcome,
                Command::Cancel { .. } | Command::ScheduleTimer { .. } => {}
            }
        }
        let Some((task, attempt)) = queue.pop() else {
            panic!("the run stalled without completing");
        };
        s.handle_into(
            Event::TaskFinished {
                task,
                attempt,
                outcome: AttemptOutcome::Succeeded,
            },
            &mut out,
        );
    }
}

fn config(
    c: &mut Criterion,
    n: usize,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(format!("scheduler/{n}"));
    g.throughput(Throughput::Elements(n as u64));
    if n >= 100_000 {
        g.sample_size(10)
            .measurement_time(Duration::from_secs(if n >= 1_000_000 { 20 } else { 5 }))
            .warm_up_time(Duration::from_secs(1));
    } else {
        g.sample_size(30).measurement_time(Duration::from_secs(3));
    }
    g
}

fn benches(c: &mut Criterion) {
    for n in SIZES {
        let spec = layered_spec(n, WIDTH, NEEDS_EVERY);
        let plan = Arc::new(Plan::build(spec.clone()).expect("layered specs are valid"));
        assert_eq!(drive(Arc::clone(&plan)), RunOutcome::Succeeded);

        let mut g = config(c, n);
        g.bench_function(BenchmarkId::new("validate", n), |b| {
            b.iter_batched(
                || spec.clone(),
                |s| black_box(Plan::build(s).expect("valid")),
                BatchSize::PerIteration,
            );
        });
        g.bench_function(BenchmarkId::new("drive", n), |b| {
            b.iter(|| black_box(drive(Arc::clone(&plan))));
        });
        g.finish();
    }
}

criterion_group!(scheduler, benches);
criterion_main!(scheduler);

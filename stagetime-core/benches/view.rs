//! What a read of a run costs an edge (a gRPC `Get`, one watch tick, a web
//! page): building its [`RunView`] with the plan cached ([`PlanCache`]) versus
//! validating the stored spec again on every read, as the edges did before.
//!
//! Run: `cargo bench -p stagetime-core --features test-util --bench view`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stagetime_core::plan::Plan;
use stagetime_core::scheduler::StageScheduler;
use stagetime_core::store::{RECORD_FORMAT, RunId, RunRecord, RunState, TaskTiming};
use stagetime_core::testkit::strategies::layered_spec;
use stagetime_core::view::{PlanCache, RunView};

const SIZES: [usize; 3] = [100, 500, 5_000];

fn record(n: usize) -> RunRecord {
    let plan = Arc::new(Plan::build(layered_spec(n, 50, 7)).expect("valid"));
    let scheduler = StageScheduler::new(Arc::clone(&plan), 1).into_state();
    RunRecord {
        format: RECORD_FORMAT,
        id: RunId::new(format!("bench-{n}")).expect("id"),
        version: 1,
        spec: plan.to_spec(),
        state: RunState::of(&scheduler),
        scheduler,
        created_ms: 1,
        updated_ms: 1,
        finished_ms: None,
        timings: vec![TaskTiming::default(); plan.len()],
        outbox: Vec::new(),
    }
}

fn benches(c: &mut Criterion) {
    for n in SIZES {
        let record = record(n);
        let plans = PlanCache::default();
        plans.view(&record).expect("view");
        let mut g = c.benchmark_group(format!("view/{n}"));
        g.throughput(Throughput::Elements(n as u64))
            .sample_size(30)
            .measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("cached_plan", n), |b| {
            b.iter(|| black_box(plans.view(&record).expect("view")));
        });
        g.bench_function(BenchmarkId::new("plan_rebuilt", n), |b| {
            b.iter(|| {
                let plan = Plan::build(record.spec.clone()).expect("valid");
                black_box(RunView::build(&record, &plan).expect("view"))
            });
        });
        g.finish();
    }
}

criterion_group!(view, benches);
criterion_main!(view);

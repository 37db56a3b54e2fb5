//! Embedding: a custom backend made of one `async fn`, run by the engine with
//! the in-memory store. Each task's `custom` payload says how long its
//! attempt takes (`sleep_ms`) and whether it fails (`fail`: a reason).
//!
//! `cargo run -p stagetime-core --example embed_custom_backend`
//!
//! `stagetime-core/tests/conformance.rs` runs the backend conformance suite
//! against [`backend`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stagetime_core::{
    AttemptOutcome, Backend, CancellationToken, Capabilities, Engine, FnBackend, LaunchRequest,
    MemoryStore, RevisionRunSpec, TaskSpec,
};

/// One attempt of a task: wait `sleep_ms`, then fail if the payload says `fail`.
async fn attempt(request: LaunchRequest, _cancel: CancellationToken) -> AttemptOutcome {
    let payload = request.task.custom.unwrap_or_default();
    let ms = payload["sleep_ms"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    match payload["fail"].as_str() {
        Some(reason) => AttemptOutcome::Failed {
            message: reason.into(),
        },
        None => AttemptOutcome::Succeeded,
    }
}

/// The whole backend: [`FnBackend`] does the rest (repeat launches, cancel,
/// observers, reconcile).
pub fn backend() -> impl Backend {
    FnBackend::new("sleeper", Capabilities::CUSTOM, attempt)
}

#[tokio::main]
async fn main() -> stagetime_core::Result<()> {
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(backend()),
    ));
    let running = engine.spawn();

    let spec = RevisionRunSpec::new("demo", "4f1c2e9")
        .task(TaskSpec::new("compile").custom(json!({"sleep_ms": 200})))
        .task(TaskSpec::new("lint").custom(json!({"sleep_ms": 100})))
        .task(
            TaskSpec::new("flaky")
                .stage(1)
                .can_fail()
                .custom(json!({"fail": "flaked"})),
        )
        .task(
            TaskSpec::new("test")
                .stage(1)
                .custom(json!({"sleep_ms": 300})),
        )
        .finally_task(TaskSpec::new("notify").custom(json!({})));
    let run = engine.submit(spec).await?;
    let record = engine.wait_finished(&run.id).await?;

    println!("run {}: {}", record.id, record.state.as_str());
    for task in record.tasks() {
        let took = match (task.timing.first_launch_ms, task.timing.finished_ms) {
            (Some(start), Some(end)) => format!("{} ms", end.saturating_sub(start)),
            _ => "-".into(),
        };
        println!(
            "  {:<8} {:<10} attempts {}  {took}  {}",
            task.name(),
            format!("{:?}", task.status),
            task.attempts,
            task.message.unwrap_or("")
        );
    }
    running.shutdown().await
}

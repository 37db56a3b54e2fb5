//! Embedding: the local backend (each task's `command` as a child process,
//! `sh -c`) run by the engine with the in-memory store. Working directories,
//! logs and outcomes go under the directory given as the first argument
//! (default: a new temporary directory).
//!
//! Running it twice with the same directory runs the tasks twice (see
//! `runs.log` there): a run created anew never reuses the outcomes an earlier
//! process left, although its id — derived from the same content — is the same.
//!
//! `cargo run -p stagetime-core --example embed_local -- /tmp/stagetime-local`

use std::path::PathBuf;
use std::sync::Arc;

use stagetime_core::local::LocalBackend;
use stagetime_core::{Engine, MemoryStore, RevisionRunSpec, RunState, TaskSpec};

#[tokio::main]
async fn main() -> stagetime_core::Result<()> {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("stagetime-embed-{}", std::process::id())),
    };
    let backend = LocalBackend::new(&root);
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new()),
        Arc::new(backend.clone()),
    ));
    let running = engine.spawn();

    // The same content every time: the run id is derived from it.
    let runs_log = root.join("runs.log");
    let spec = RevisionRunSpec::new("demo", "4f1c2e9")
        .task(TaskSpec::new("hello").command("echo hello from $STAGETIME_TASK"))
        .task(TaskSpec::new("count").stage(1).command(format!(
            "echo \"$STAGETIME_RUN_ID\" >> '{}'",
            runs_log.display()
        )));
    let run = engine.submit(spec).await?;
    let record = engine.wait_finished(&run.id).await?;
    println!("run {}: {}", record.id, record.state.as_str());
    for task in record.tasks() {
        println!(
            "  {:<6} {:?}  log: {}",
            task.name(),
            task.status,
            task.timing.handle.as_deref().unwrap_or("-")
        );
    }
    let runs = std::fs::read_to_string(&runs_log).unwrap_or_default();
    println!(
        "{} has {} line(s)",
        runs_log.display(),
        runs.lines().count()
    );
    running.shutdown().await?;
    if record.state != RunState::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

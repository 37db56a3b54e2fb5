//! Runs *revision runs*: for one commit of a repository, tasks grouped into
//! stages (each stage starts when the one before has succeeded), with
//! `needs`, retries, timeouts, `can_fail`, `finally` tasks, fail-fast, cancel
//! and rerun. This crate is the library; embed it to run such workflows in
//! your own program.
//!
//! **What it is:**
//! - the document, [`RevisionRunSpec`] (built in code, or YAML/JSON —
//!   docs/format.md), and its validation, [`Plan::build`], which reports
//!   every problem at once;
//! - a pure, clock-free stage scheduler, [`StageScheduler`], that you may
//!   drive by hand (events in, commands out);
//! - the [`Engine`], which drives the scheduler with a [`Backend`] (what runs
//!   one attempt of a task) and a [`Store`] (where runs are kept) and
//!   survives crashes of either side;
//! - embedded defaults: [`MemoryStore`], [`local::LocalBackend`] (child
//!   processes) and [`FnBackend`] (your `async fn`, as a whole backend).
//!
//! **What it is not:** a server, a CLI, gRPC, Redis or Kubernetes — those are
//! the `stagetime`, `stagetime-redis` and `stagetime-kube` crates. It checks
//! out no code and reads no git; a task's work is whatever its backend does.
//!
//! A custom backend driving a run, with the engine and the memory store:
//!
//! ```
//! use std::sync::Arc;
//! use stagetime_core::{AttemptOutcome, Capabilities, Engine, FnBackend, MemoryStore, RevisionRunSpec, RunState, TaskSpec};
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> stagetime_core::Result<()> {
//!     // One attempt of a task: here, read the task's opaque `custom` payload.
//!     let backend = FnBackend::new("greeter", Capabilities::CUSTOM, |request, _cancel| async move {
//!         let payload = request.task.custom.unwrap_or_default();
//!         match payload["greet"].as_str() {
//!             Some(who) => { println!("hello, {who}"); AttemptOutcome::Succeeded }
//!             None => AttemptOutcome::Failed { message: "nobody to greet".into() },
//!         }
//!     });
//!     let engine = Arc::new(Engine::new(Arc::new(MemoryStore::new()), Arc::new(backend)));
//!     let running = engine.spawn(); // the engine's loop, on a tokio task
//!
//!     let spec = RevisionRunSpec::new("demo", "4f1c2e9")
//!         .task(TaskSpec::new("build").custom(json!({"greet": "build"})))
//!         .task(TaskSpec::new("test").stage(1).retries(2).custom(json!({"greet": "tests"})))
//!         .finally_task(TaskSpec::new("report").custom(json!({"greet": "everyone"})));
//!     let run = engine.submit(spec).await?; // validated: Error::Invalid lists every problem
//!     let record = engine.wait_finished(&run.id).await?;
//!     assert_eq!(record.state, RunState::Succeeded);
//!     for task in record.tasks() {
//!         println!("{}: {:?} after {} attempt(s)", task.name(), task.status, task.attempts);
//!     }
//!     running.shutdown().await
//! }
//! ```
//!
//! To write a [`Backend`] yourself, implement it with
//! `#[stagetime_core::async_trait]` and check it with
//! `backend_conformance_tests!` (feature `test-util`). The contracts
//! between the parts are written on [`Backend`] (cancels must be observed;
//! [`Backend::reconcile`] may return nothing), [`Engine::wait_finished`]
//! (needs a running engine loop) and [`Engine::subscribe`] (a lossy
//! broadcast of committed records). The repository's
//! `stagetime-core/examples/embed_*.rs` show a hand-driven scheduler, a custom
//! backend and the local backend as whole programs.

pub mod backend;
pub mod control;
pub mod engine;
pub mod error;
pub mod fn_backend;
pub mod legacy;
pub mod limits;
pub mod local;
pub mod logs;
pub mod memory;
pub mod plan;
pub mod scheduler;
pub mod spec;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testkit;
pub mod view;

pub use async_trait::async_trait;
pub use backend::{Backend, Capabilities, LaunchKey, LaunchRequest, Observation};
pub use engine::Engine;
pub use error::{Error, ErrorKind, FieldError, FieldErrors, Result};
pub use fn_backend::FnBackend;
pub use logs::{LogChunk, LogQuery, LogSource};
pub use memory::MemoryStore;
pub use plan::Plan;
pub use scheduler::{AttemptOutcome, Command, Event, RunOutcome, StageScheduler};
pub use spec::{RevisionRunSpec, TaskSpec};
pub use store::{RunId, RunRecord, RunState, Store};
pub use tokio_util::sync::CancellationToken;
pub use view::{PlanCache, RunView, StageView, TaskView};

//! stagetime-core: the model, validation, pure stage scheduler, the
//! `Backend`/`Store` traits, the engine that drives them, and the embedded
//! defaults (`MemoryStore`, `LocalBackend`).

pub mod backend;
pub mod control;
pub mod engine;
pub mod error;
pub mod legacy;
pub mod limits;
pub mod local;
pub mod memory;
pub mod plan;
pub mod scheduler;
pub mod spec;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testkit;

pub use backend::{Backend, LaunchKey, LaunchRequest, Observation};
pub use error::{Error, ErrorKind, FieldError, FieldErrors, Result};
pub use plan::Plan;
pub use scheduler::{AttemptOutcome, Command, Event, RunOutcome, StageScheduler};
pub use spec::{RevisionRunSpec, TaskSpec};
pub use store::{RunId, RunRecord, RunState, Store};

//! stagetime-core: the model, validation, pure stage scheduler, the
//! `Backend`/`Store` traits, the engine that drives them, and the embedded
//! defaults (`MemoryStore`, `LocalBackend`).

pub mod backend;
pub mod error;
pub mod legacy;
pub mod plan;
pub mod scheduler;
pub mod spec;
pub mod store;

pub use error::{Error, ErrorKind, FieldError, FieldErrors, Result};
pub use spec::{RevisionRunSpec, TaskSpec};
pub use backend::{Backend, LaunchKey, LaunchRequest, Observation};
pub use plan::Plan;
pub use scheduler::{AttemptOutcome, Command, Event, RunOutcome, StageScheduler};
pub use store::{RunId, RunRecord, RunState, Store};

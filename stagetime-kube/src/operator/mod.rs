//! The operator: RevisionRuns (with their Repo and PipelineRunTemplates)
//! become runs in the shared store; their status follows the runs.
//!
//! * [`merge`]: overrides laid over template defaults, and the whole
//!   RevisionRun as a [`stagetime_core::RevisionRunSpec`] — pure;
//! * [`status`]: a RevisionRun's status from its run's record — pure;
//! * [`mod@reconcile`]: the kube-runtime controller ([`Operator`]).
//!
//! The operator submits runs; it never runs tasks. Workers sharing the same
//! store (Redis) pick the runs up and create the PipelineRuns, which carry
//! an ownerReference to their RevisionRun (the run's `stagetime/owner`
//! annotation, see [`crate::render::OwnerAnnotation`]).

pub mod merge;
pub mod reconcile;
pub mod status;

pub use merge::{
    RunIdentity, build_run_spec, merge_technology, missing_templates, parse_entries,
    parse_overrides, run_id_for,
};
pub use reconcile::{FINALIZER, Operator, OperatorConfig, OperatorMetrics, reconcile};
pub use status::{error_status, status_from_view};

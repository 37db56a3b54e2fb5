//! Kubernetes adapter for stagetime.
//!
//! This crate will hold the Tekton backend (`TektonBackend`: one
//! `tekton.dev/v1` PipelineRun per task attempt, observed with kube-runtime's
//! watcher), the CRD types of the operator (RevisionRun, Repo,
//! PipelineRunTemplate) and the reconciler logic. It exposes nothing yet.

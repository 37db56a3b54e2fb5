//! # stagetime
//!
//! Commit-driven, staged *revision runs*: for one commit of a repository,
//! pipeline runs grouped into ordered stages, run by a pure stage scheduler
//! on a pluggable [`Backend`] and
//! [`Store`].
//!
//! This facade re-exports the focused crates:
//! - [`core`]: model, validation, scheduler, traits, engine, embedded defaults;
//! - `kube` (feature `kube`): the Tekton backend and operator logic;
//!   `backends` chooses a backend by name for the binaries;
//! - `redis` (feature `redis`): the Redis-backed shared store;
//! - `telemetry` (feature `telemetry`): logging, metrics and probe endpoint of the binaries;
//! - `runtime` (feature `telemetry`): how the binaries' processes run: `run_main`, exit statuses, shutdown;
//! - `grpc` (feature `grpc`): the gRPC server (legacy and `stagetime.v1` services) and client;
//! - `forge` and `http` (feature `forge`): forge webhooks (GitHub, GitLab,
//!   Gitea/Forgejo) starting runs, and the server's HTTP surface;
//! - [`report`]: plan tables, dependency graphs and run summaries as text.

pub use stagetime_core as core;
pub use stagetime_core::*;

#[cfg(feature = "kube")]
pub mod backends;
#[cfg(feature = "kube")]
pub use stagetime_kube as kube;
#[cfg(feature = "redis")]
pub use stagetime_redis as redis;
#[cfg(feature = "forge")]
pub mod forge;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "forge")]
pub mod http;
pub mod report;
#[cfg(feature = "telemetry")]
pub mod runtime;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "forge")]
pub mod web;

//! The gRPC API (feature `grpc`): the earlier system's `revisionrun`
//! services (wire-compatible), the current `stagetime.v1` API, health and
//! reflection — served over [`RunControl`](crate::control::RunControl) and a
//! [`Store`](crate::store::Store), without a backend (workers run the runs).
//!
//! - [`serve`] builds and runs the server until a shutdown future resolves;
//! - [`client`] connects the CLI (plaintext for `http://`, TLS for `https://`);
//! - [`metrics`] holds the Prometheus families of the server and the worker.
//!
//! Every input is bounded: messages by [`Limits::max_message_bytes`] (the
//! transport answers `OUT_OF_RANGE` beyond it), documents by
//! [`Limits::max_document_bytes`], runs by [`Limits::max_tasks`], ids and
//! filters by their own small limits; bad input is answered with
//! `INVALID_ARGUMENT` naming the field, and nothing is stored.

mod auth;
pub mod client;
pub mod codec;
mod convert;
pub mod metrics;
mod server;
mod service;

pub use auth::{AuthToken, load_token};
pub use convert::{
    run_state_from_proto, run_state_to_proto, run_to_proto, task_status_from_proto,
    task_status_to_proto,
};
pub use server::{Limits, ServerConfig, SharedLogSource, TlsFiles, serve};
pub use service::{LegacyService, RunsService, StatusService};

pub use generated::{legacy, v1};

/// The generated code, exempt from the crate's lints and rustdoc's checks
/// of the proto comments.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]
mod generated {
    /// The earlier system's messages and services (package `revisionrun`),
    /// generated from `proto/revisionrun.proto`.
    pub mod legacy {
        include!(concat!(env!("OUT_DIR"), "/revisionrun.rs"));
    }

    /// The current API (package `stagetime.v1`), generated from
    /// `proto/stagetime/v1/stagetime.proto`.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/stagetime.v1.rs"));
    }
}

/// The encoded file descriptor set of both packages, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/stagetime_descriptor.bin"));

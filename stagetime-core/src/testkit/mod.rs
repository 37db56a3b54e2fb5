//! Test kit (feature `test-util`): an instant backend for tests and
//! benchmarks, a store with a gate before claims, proptest strategies for
//! random specs, and the conformance suites every [`Store`](crate::store::Store) and
//! [`Backend`](crate::backend::Backend) implementation must pass.
//!
//! Run a suite against your implementation with one macro call in a test file:
//!
//! ```text
//! stagetime_core::store_conformance_tests!(async {
//!     Some(stagetime_core::testkit::StoreUnderTest::new(std::sync::Arc::new(MyStore::new())))
//! });
//! ```
//! The expression returns `None` when the server it needs is missing (the
//! harness says so loudly); every case then passes as skipped.

pub mod backend_suite;
mod gated;
mod instant;
pub mod store_suite;
pub mod strategies;

pub use backend_suite::{BackendHarness, TaskBehaviour};
pub use gated::{ClaimGate, GatedStore};
pub use instant::InstantBackend;
pub use store_suite::StoreUnderTest;

use crate::spec::{RevisionRunSpec, TaskSpec};

/// A task running `command` in `stage`.
pub fn command_task(name: &str, stage: u32, command: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        stage: Some(stage.into()),
        command: Some(command.into()),
        ..TaskSpec::default()
    }
}

/// A spec of repo `demo`, commit `commit`, with `tasks`.
pub fn spec_with(commit: &str, tasks: Vec<TaskSpec>) -> RevisionRunSpec {
    RevisionRunSpec {
        repo: "demo".into(),
        commit: commit.into(),
        tasks,
        ..RevisionRunSpec::default()
    }
}

/// A unique suffix for ids in tests sharing a server.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}-{n}",
        (t ^ u64::from(std::process::id())) & 0xff_ffff
    )
}

/// True when the environment demands that server-backed tests run
/// (`STAGETIME_REQUIRE_SERVERS=1`): a missing server is then a failure.
pub fn servers_required() -> bool {
    std::env::var("STAGETIME_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

/// Reports a missing server: panics when [`servers_required`], otherwise
/// prints a loud SKIPPED line to stderr.
///
/// # Panics
/// When servers are required.
pub fn skip_or_fail(what: &str) {
    if servers_required() {
        panic!("{what} is required (STAGETIME_REQUIRE_SERVERS=1) but not available");
    }
    eprintln!(
        "\n*** SKIPPED: {what} not available; set STAGETIME_REQUIRE_SERVERS=1 to make this a failure ***\n"
    );
}

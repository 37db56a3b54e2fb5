//! The Store and Backend conformance suites against the embedded defaults.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stagetime_core::backend::Backend;
use stagetime_core::local::LocalBackend;
use stagetime_core::memory::MemoryStore;
use stagetime_core::spec::TaskSpec;
use stagetime_core::testkit::{BackendHarness, InstantBackend, StoreUnderTest, TaskBehaviour};

/// The custom backend of the embedding example, tested as it is written there.
#[path = "../examples/embed_custom_backend.rs"]
#[allow(dead_code)]
mod embed_custom_backend;

stagetime_core::store_conformance_tests!(async {
    Some(StoreUnderTest::new(Arc::new(
        MemoryStore::new().with_reclaim_after(Duration::from_millis(300)),
    )))
});

struct LocalHarness {
    dir: tempfile::TempDir,
}

#[async_trait]
impl BackendHarness for LocalHarness {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(LocalBackend::new(self.dir.path()))
    }

    fn task(&self, name: &str, behaviour: TaskBehaviour) -> TaskSpec {
        let command = match behaviour {
            TaskBehaviour::Succeed => "echo fine",
            TaskBehaviour::Fail => "echo broken >&2; exit 3",
            TaskBehaviour::Hang => "sleep 600",
        };
        stagetime_core::testkit::command_task(name, 0, command)
    }
}

mod local {
    use super::*;
    stagetime_core::backend_conformance_tests!(async {
        Some(Arc::new(LocalHarness {
            dir: tempfile::tempdir().unwrap(),
        }) as Arc<dyn BackendHarness>)
    });
}

struct InstantHarness(InstantBackend);

#[async_trait]
impl BackendHarness for InstantHarness {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }

    fn task(&self, name: &str, behaviour: TaskBehaviour) -> TaskSpec {
        let command = match behaviour {
            TaskBehaviour::Succeed => "true",
            TaskBehaviour::Fail => "false",
            TaskBehaviour::Hang => "sleep 600",
        };
        stagetime_core::testkit::command_task(name, 0, command)
    }
}

mod instant {
    use super::*;
    stagetime_core::backend_conformance_tests!(async {
        Some(Arc::new(InstantHarness(InstantBackend::new())) as Arc<dyn BackendHarness>)
    });
}

/// The example's backend: its world is one instance, shared (as a restarted
/// embedded backend has no other).
struct EmbeddedHarness(Arc<dyn Backend>);

#[async_trait]
impl BackendHarness for EmbeddedHarness {
    async fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.0)
    }

    fn task(&self, name: &str, behaviour: TaskBehaviour) -> TaskSpec {
        let payload = match behaviour {
            TaskBehaviour::Succeed => serde_json::json!({"sleep_ms": 10}),
            TaskBehaviour::Fail => serde_json::json!({"fail": "asked to fail"}),
            TaskBehaviour::Hang => serde_json::json!({"sleep_ms": 600_000}),
        };
        TaskSpec::new(name).custom(payload)
    }
}

mod embedded {
    use super::*;
    stagetime_core::backend_conformance_tests!(async {
        Some(
            Arc::new(EmbeddedHarness(Arc::new(embed_custom_backend::backend())))
                as Arc<dyn BackendHarness>,
        )
    });
}

//! The conformance suite every [`Backend`] implementation must pass. Use it
//! through [`crate::backend_conformance_tests!`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::backend::{Backend, LaunchKey, LaunchRequest, Observation, RunMeta};
use crate::scheduler::AttemptOutcome;
use crate::spec::TaskSpec;
use crate::store::RunId;

/// How a test task should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskBehaviour {
    /// Succeed promptly.
    Succeed,
    /// Fail promptly.
    Fail,
    /// Run until cancelled (or for a long time).
    Hang,
}

/// Gives the suite backends and tasks with a known behaviour.
#[async_trait]
pub trait BackendHarness: Send + Sync + 'static {
    /// A backend instance. Instances returned by repeated calls share the
    /// same world (the same directory, the same cluster), like a restarted
    /// process would.
    async fn backend(&self) -> Arc<dyn Backend>;

    /// A task named `name` that behaves as asked on this backend.
    fn task(&self, name: &str, behaviour: TaskBehaviour) -> TaskSpec;

    /// How long to wait for an outcome (default 30 s).
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

fn request(
    h: &dyn BackendHarness,
    run: &RunId,
    name: &str,
    behaviour: TaskBehaviour,
) -> LaunchRequest {
    LaunchRequest {
        key: LaunchKey {
            run: run.clone(),
            task: name.into(),
            attempt: 1,
        },
        run: RunMeta {
            repo: "conformance".into(),
            commit: "abc1234".into(),
            ..RunMeta::default()
        },
        task: h.task(name, behaviour),
        stage: Some(0),
        is_finally: false,
        timeout: None,
    }
}

fn new_run() -> RunId {
    RunId::new(super::unique("bc")).expect("valid id")
}

/// An observation stream that remembers what it saw, so waiting for one
/// attempt never loses another's outcome.
struct Watch {
    stream: BoxStream<'static, Observation>,
    seen: Vec<Observation>,
}

impl Watch {
    fn new(stream: BoxStream<'static, Observation>) -> Self {
        Watch {
            stream,
            seen: Vec::new(),
        }
    }

    async fn outcome(&mut self, key: &LaunchKey, patience: Duration) -> AttemptOutcome {
        if let Some(pos) = self.seen.iter().position(|o| o.key == *key) {
            return self.seen.remove(pos).outcome;
        }
        let found = tokio::time::timeout(patience, async {
            while let Some(o) = self.stream.next().await {
                if o.key == *key {
                    return Some(o.outcome);
                }
                self.seen.push(o);
            }
            None
        })
        .await;
        match found {
            Ok(Some(o)) => o,
            Ok(None) => panic!("observation stream ended before {key} finished"),
            Err(_) => panic!("no outcome for {key} within {patience:?}"),
        }
    }
}

async fn next_for(watch: &mut Watch, key: &LaunchKey, patience: Duration) -> AttemptOutcome {
    watch.outcome(key, patience).await
}

/// A succeeding task is observed as succeeded.
pub async fn success_is_observed(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut obs = Watch::new(b.observe());
    let req = request(&*h, &new_run(), "ok", TaskBehaviour::Succeed);
    let launched = b.launch(req.clone()).await.expect("launch");
    assert!(launched.created);
    assert!(!launched.handle.is_empty(), "a handle tells where to look");
    assert_eq!(
        next_for(&mut obs, &req.key, h.patience()).await,
        AttemptOutcome::Succeeded
    );
}

/// A failing task is observed as failed, with a message.
pub async fn failure_is_observed(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut obs = Watch::new(b.observe());
    let req = request(&*h, &new_run(), "bad", TaskBehaviour::Fail);
    b.launch(req.clone()).await.expect("launch");
    match next_for(&mut obs, &req.key, h.patience()).await {
        AttemptOutcome::Failed { message } => assert!(!message.is_empty()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Launching the same key twice starts one attempt.
pub async fn launch_is_idempotent(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut obs = Watch::new(b.observe());
    let req = request(&*h, &new_run(), "once", TaskBehaviour::Hang);
    let first = b.launch(req.clone()).await.expect("launch");
    let second = b.launch(req.clone()).await.expect("launch again");
    assert!(first.created);
    assert!(!second.created, "the repeat must adopt, not start again");
    assert_eq!(first.handle, second.handle);
    // A fresh instance (a restarted worker) must not start it again either.
    let other = h.backend().await;
    let third = other
        .launch(req.clone())
        .await
        .expect("launch from another instance");
    assert!(
        !third.created,
        "a restarted backend must not start the attempt again"
    );
    b.cancel(&req.key).await.expect("cancel");
    let _ = next_for(&mut obs, &req.key, h.patience()).await;
}

/// Cancelling a running attempt ends it as cancelled.
pub async fn cancel_running_is_observed(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut obs = Watch::new(b.observe());
    let req = request(&*h, &new_run(), "long", TaskBehaviour::Hang);
    b.launch(req.clone()).await.expect("launch");
    b.cancel(&req.key).await.expect("cancel");
    b.cancel(&req.key).await.expect("cancel is idempotent");
    match next_for(&mut obs, &req.key, h.patience()).await {
        AttemptOutcome::Cancelled { .. } => {}
        other => panic!("expected cancelled, got {other:?}"),
    }
}

/// Cancelling something unknown succeeds and does nothing.
pub async fn cancel_unknown_is_ok(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let key = LaunchKey {
        run: new_run(),
        task: "ghost".into(),
        attempt: 3,
    };
    b.cancel(&key)
        .await
        .expect("cancelling an unknown attempt is not an error");
}

/// Every observer sees every outcome.
pub async fn observers_all_see_outcomes(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut one = Watch::new(b.observe());
    let mut two = Watch::new(b.observe());
    let req = request(&*h, &new_run(), "fan", TaskBehaviour::Succeed);
    b.launch(req.clone()).await.expect("launch");
    assert_eq!(
        next_for(&mut one, &req.key, h.patience()).await,
        AttemptOutcome::Succeeded
    );
    assert_eq!(
        next_for(&mut two, &req.key, h.patience()).await,
        AttemptOutcome::Succeeded
    );
}

/// After a restart, reconcile reports attempts that already finished.
pub async fn reconcile_reports_finished_attempts(h: Arc<dyn BackendHarness>) {
    let b = h.backend().await;
    let mut obs = Watch::new(b.observe());
    let run = new_run();
    let ok = request(&*h, &run, "done", TaskBehaviour::Succeed);
    let bad = request(&*h, &run, "broke", TaskBehaviour::Fail);
    b.launch(ok.clone()).await.expect("launch");
    b.launch(bad.clone()).await.expect("launch");
    let _ = next_for(&mut obs, &ok.key, h.patience()).await;
    let _ = next_for(&mut obs, &bad.key, h.patience()).await;
    let restarted = h.backend().await;
    let found = restarted.reconcile(&run).await.expect("reconcile");
    let outcome_of = |k: &LaunchKey| {
        found
            .iter()
            .find(|o| o.key == *k)
            .map(|o| o.outcome.clone())
    };
    assert_eq!(
        outcome_of(&ok.key),
        Some(AttemptOutcome::Succeeded),
        "{found:?}"
    );
    assert!(
        matches!(outcome_of(&bad.key), Some(AttemptOutcome::Failed { .. })),
        "{found:?}"
    );
    assert!(
        found.iter().all(|o| o.key.run == run),
        "only this run's attempts"
    );
    let empty = restarted
        .reconcile(&new_run())
        .await
        .expect("reconcile of an unknown run");
    assert!(empty.is_empty());
}

/// Expands to one `#[tokio::test]` per backend conformance case. The
/// argument is an expression (usually an `async` block) yielding
/// `Option<Arc<dyn BackendHarness>>`; `None` skips.
#[macro_export]
macro_rules! backend_conformance_tests {
    ($make:expr) => {
        $crate::backend_conformance_tests!(@cases $make;
            success_is_observed, failure_is_observed, launch_is_idempotent, cancel_running_is_observed,
            cancel_unknown_is_ok, observers_all_see_outcomes, reconcile_reports_finished_attempts);
    };
    (@cases $make:expr; $($case:ident),*) => {
        mod backend_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness: Option<std::sync::Arc<dyn $crate::testkit::BackendHarness>> = $make.await;
                    if let Some(h) = harness {
                        $crate::testkit::backend_suite::$case(h).await;
                    }
                }
            )*
        }
    };
}

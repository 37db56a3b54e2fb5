//! [`FnBackend`]: a whole [`Backend`] from one `async fn` per attempt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation, Observers,
};
use crate::error::Result;
use crate::scheduler::AttemptOutcome;
use crate::store::RunId;

/// One attempt: running (with its cancel token) or finished (at a time, in
/// ms since the epoch, for housekeeping).
enum Attempt {
    Running(CancellationToken),
    Finished(AttemptOutcome, u64),
}

#[derive(Default)]
struct State {
    attempts: HashMap<LaunchKey, Attempt>,
    observers: Observers,
}

/// A [`Backend`] made of one function that runs an attempt:
/// `async fn(LaunchRequest, CancellationToken) -> AttemptOutcome`.
///
/// It provides every contract of the trait for you:
/// - each attempt runs as its own tokio task; launching a key again (running
///   or finished) starts nothing and returns `created: false`;
/// - the outcome is published to every [`Backend::observe`] stream;
/// - [`Backend::cancel`] cancels the token, then drops the attempt's future
///   (at its next `.await`) and publishes [`AttemptOutcome::Cancelled`]; so a
///   cancel is always observed, even by a function that never looks at the
///   token — the token is for work the function hands elsewhere (threads,
///   spawned tasks, child processes);
/// - a panic in the function ends the attempt as failed, naming the panic;
/// - [`Backend::reconcile`] reports the attempts of a run that finished in
///   this process;
/// - finished attempts are remembered (for the two points above) until
///   [`Backend::housekeeping`] forgets those older than its `ttl`
///   (`keep_last` does not apply); set `EngineConfig::housekeeping` for a
///   long-lived process.
///
/// Attempts live in this process's memory. With a durable store, a restarted
/// process does not know attempts the previous one started: they end only
/// through their task's `timeout`. Give such tasks a timeout, or implement
/// [`Backend`] with state that survives the process.
///
/// ```
/// use stagetime_core::{AttemptOutcome, FnBackend, backend::Capabilities};
///
/// let backend = FnBackend::new("echo", Capabilities::CUSTOM, |request, _cancel| async move {
///     println!("running {} with {:?}", request.key, request.task.custom);
///     AttemptOutcome::Succeeded
/// });
/// # let _ = backend;
/// ```
pub struct FnBackend<F> {
    name: String,
    capabilities: Capabilities,
    run: Arc<F>,
    state: Arc<Mutex<State>>,
}

impl<F> Clone for FnBackend<F> {
    fn clone(&self) -> Self {
        FnBackend {
            name: self.name.clone(),
            capabilities: self.capabilities,
            run: Arc::clone(&self.run),
            state: Arc::clone(&self.state),
        }
    }
}

impl<F> std::fmt::Debug for FnBackend<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnBackend")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl<F, Fut> FnBackend<F>
where
    F: Fn(LaunchRequest, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AttemptOutcome> + Send + 'static,
{
    /// A backend called `name` (for messages) that runs what `capabilities`
    /// says (usually [`Capabilities::CUSTOM`]) by calling `run` once per
    /// attempt. Clones share their attempts.
    pub fn new(name: impl Into<String>, capabilities: Capabilities, run: F) -> Self {
        FnBackend {
            name: name.into(),
            capabilities,
            run: Arc::new(run),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn finish(state: &Mutex<State>, key: LaunchKey, outcome: AttemptOutcome) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let now_ms = crate::engine::Clock::now_ms(&crate::engine::SystemClock);
    s.attempts
        .insert(key.clone(), Attempt::Finished(outcome.clone(), now_ms));
    s.observers.publish(Observation { key, outcome });
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let panic = e.into_panic();
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[async_trait]
impl<F, Fut> Backend for FnBackend<F>
where
    F: Fn(LaunchRequest, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AttemptOutcome> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let key = request.key.clone();
        let handle = key.to_string();
        let token = CancellationToken::new();
        {
            let mut s = self.lock();
            if s.attempts.contains_key(&key) {
                return Ok(Launched {
                    handle,
                    created: false,
                });
            }
            s.attempts
                .insert(key.clone(), Attempt::Running(token.clone()));
        }
        let mut attempt = tokio::spawn((self.run)(request, token.clone()));
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let outcome = tokio::select! {
                ended = &mut attempt => match ended {
                    Ok(outcome) => outcome,
                    Err(e) => AttemptOutcome::Failed {
                        message: format!("the attempt panicked: {}", panic_message(e)),
                    },
                },
                () = token.cancelled() => {
                    attempt.abort();
                    AttemptOutcome::Cancelled { message: "cancelled".into() }
                }
            };
            finish(&state, key, outcome);
        });
        Ok(Launched {
            handle,
            created: true,
        })
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        if let Some(Attempt::Running(token)) = self.lock().attempts.get(key) {
            token.cancel();
        }
        Ok(())
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        self.lock().observers.subscribe()
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let s = self.lock();
        let mut found: Vec<Observation> = s
            .attempts
            .iter()
            .filter(|(k, _)| k.run == *run)
            .filter_map(|(k, a)| match a {
                Attempt::Finished(outcome, _) => Some(Observation {
                    key: k.clone(),
                    outcome: outcome.clone(),
                }),
                Attempt::Running(_) => None,
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        let ttl_ms = u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut report = HousekeepingReport::default();
        self.lock().attempts.retain(|key, attempt| match attempt {
            Attempt::Finished(_, at) if at.saturating_add(ttl_ms) <= policy.now_ms => {
                report.deleted.push(key.to_string());
                false
            }
            _ => true,
        });
        report.deleted.sort();
        Ok(report)
    }
}

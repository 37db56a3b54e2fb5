use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation, Observers,
};
use crate::error::Result;
use crate::scheduler::AttemptOutcome;
use crate::store::RunId;

type Decide = dyn Fn(&LaunchRequest) -> Option<AttemptOutcome> + Send + Sync;

#[derive(Default)]
struct State {
    created: HashMap<LaunchKey, u32>,
    calls: HashMap<LaunchKey, u32>,
    finished: HashMap<LaunchKey, AttemptOutcome>,
    hanging: Vec<LaunchKey>,
    observers: Observers,
}

/// A backend whose attempts end the moment they are launched, as decided by
/// a function (`None`: the attempt hangs until cancelled). It counts launches
/// per key, so tests can check that nothing ran twice.
///
/// The default decision reads the task's `command`: `false` or `exit 1`
/// fails, anything containing `sleep` hangs, everything else succeeds.
#[derive(Clone)]
pub struct InstantBackend {
    decide: Arc<Decide>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for InstantBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstantBackend").finish_non_exhaustive()
    }
}

impl Default for InstantBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl InstantBackend {
    /// Decides by the task's command (see the type's documentation).
    pub fn new() -> Self {
        Self::with(|r| match r.task.command.as_deref() {
            Some(c) if c.trim() == "false" || c.trim().starts_with("exit 1") => {
                Some(AttemptOutcome::Failed {
                    message: "exited with status 1".into(),
                })
            }
            Some(c) if c.contains("sleep") => None,
            _ => Some(AttemptOutcome::Succeeded),
        })
    }

    /// Decides with `decide`.
    pub fn with(
        decide: impl Fn(&LaunchRequest) -> Option<AttemptOutcome> + Send + Sync + 'static,
    ) -> Self {
        InstantBackend {
            decide: Arc::new(decide),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many times each key was actually started (idempotent repeats excluded).
    pub fn created(&self) -> HashMap<LaunchKey, u32> {
        self.lock().created.clone()
    }

    /// How many times each key was asked for (repeats included).
    pub fn calls(&self) -> HashMap<LaunchKey, u32> {
        self.lock().calls.clone()
    }

    /// Total attempts started.
    pub fn total_created(&self) -> u64 {
        self.lock().created.values().map(|n| u64::from(*n)).sum()
    }

    fn publish(state: &mut State, o: Observation) {
        state.observers.publish(o);
    }
}

#[async_trait]
impl Backend for InstantBackend {
    fn name(&self) -> &str {
        "instant"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            commands: true,
            pipelines: true,
            custom: true,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let handle = request.key.to_string();
        let outcome = (self.decide)(&request);
        let mut s = self.lock();
        *s.calls.entry(request.key.clone()).or_default() += 1;
        if s.created.contains_key(&request.key) {
            return Ok(Launched {
                handle,
                created: false,
            });
        }
        s.created.insert(request.key.clone(), 1);
        match outcome {
            Some(outcome) => {
                s.finished.insert(request.key.clone(), outcome.clone());
                Self::publish(
                    &mut s,
                    Observation {
                        key: request.key,
                        outcome,
                    },
                );
            }
            None => s.hanging.push(request.key),
        }
        Ok(Launched {
            handle,
            created: true,
        })
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        let mut s = self.lock();
        if let Some(pos) = s.hanging.iter().position(|k| k == key) {
            s.hanging.remove(pos);
            let outcome = AttemptOutcome::Cancelled {
                message: "cancelled".into(),
            };
            s.finished.insert(key.clone(), outcome.clone());
            Self::publish(
                &mut s,
                Observation {
                    key: key.clone(),
                    outcome,
                },
            );
        }
        Ok(())
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        self.lock().observers.subscribe()
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let s = self.lock();
        let mut found: Vec<Observation> = s
            .finished
            .iter()
            .filter(|(k, _)| k.run == *run)
            .map(|(k, o)| Observation {
                key: k.clone(),
                outcome: o.clone(),
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn housekeeping(&self, _policy: &Housekeeping) -> Result<HousekeepingReport> {
        Ok(HousekeepingReport::default())
    }
}

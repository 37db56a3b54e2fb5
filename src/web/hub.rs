//! One poller per watched run, shared by every open stream of that run:
//! a thousand pages on one run cost the store one version read per poll,
//! and each new version is turned into a view and rendered once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use stagetime_core::ErrorKind;
use stagetime_core::store::{RunId, RunRecord};
use stagetime_core::view::RunView;
use tokio::sync::watch;
use tracing::warn;

use super::WebState;

/// A version of a run, as every stream of it sends it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The view, or why it could not be built.
    pub view: Result<RunView, String>,
    json: OnceLock<String>,
    html: OnceLock<String>,
}

impl Snapshot {
    fn of(state: &WebState, record: &RunRecord) -> Self {
        Snapshot {
            view: state.control.view_of(record).map_err(|e| e.to_string()),
            json: OnceLock::new(),
            html: OnceLock::new(),
        }
    }

    /// The view as JSON (made once).
    pub fn json(&self, view: &RunView) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(view).unwrap_or_default())
    }

    /// The page's live fragment (rendered once).
    pub fn html(&self, view: &RunView) -> &str {
        self.html
            .get_or_init(|| super::pages::run_live(view, super::pages::now_ms()))
    }
}

/// What a run's poller publishes.
#[derive(Debug, Clone)]
pub(crate) enum Polled {
    /// The newest version.
    Run(Arc<Snapshot>),
    /// The run cannot be read any more (gone, or the store stayed away).
    Failed(String),
    /// The server is shutting down.
    Stopped,
}

/// The pollers of the runs being watched.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    runs: Mutex<HashMap<RunId, watch::Receiver<Polled>>>,
}

impl Hub {
    /// A receiver of `id`'s versions, starting at the newest known (or
    /// `first`, just read, when nobody watches the run yet).
    pub fn subscribe(
        &self,
        state: &WebState,
        id: &RunId,
        first: &RunRecord,
    ) -> watch::Receiver<Polled> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = runs.get(id) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(Polled::Run(Arc::new(Snapshot::of(state, first))));
        runs.insert(id.clone(), rx.clone());
        tokio::spawn(poll(state.clone(), id.clone(), first.version, tx));
        rx
    }

    fn forget(&self, id: &RunId) {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// True (and the poller's entry removed) when only the hub's own
    /// receiver is left. Under the lock, so no stream joins a poller that is
    /// about to stop.
    fn release_if_unwatched(&self, id: &RunId, tx: &watch::Sender<Polled>) -> bool {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        if tx.receiver_count() <= 1 {
            runs.remove(id);
            true
        } else {
            false
        }
    }
}

/// Polls the run's version like the gRPC watch does (the server runs no
/// engine; any worker may change the run) until nobody watches it.
async fn poll(state: WebState, id: RunId, mut last_version: u64, tx: watch::Sender<Polled>) {
    let mut stopping = state.stopping.clone();
    let mut unavailable = 0u32;
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(state.poll) => false,
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        if stopped {
            state.hub.forget(&id);
            let _ = tx.send(Polled::Stopped);
            return;
        }
        if state.hub.release_if_unwatched(&id, &tx) {
            return;
        }
        let read = match state.store.run_version(&id).await {
            Ok(v) if v == last_version => {
                unavailable = 0;
                continue;
            }
            Ok(_) => state.store.load_run(&id).await,
            Err(e) => Err(e),
        };
        match read {
            Ok(record) => {
                unavailable = 0;
                last_version = record.version;
                let _ = tx.send(Polled::Run(Arc::new(Snapshot::of(&state, &record))));
            }
            Err(e) if e.kind() == ErrorKind::Unavailable && unavailable < 20 => {
                unavailable += 1;
                warn!(run = %id, error = %e, "web watch: store unavailable; retrying");
            }
            Err(e) => {
                // Later subscribers start a poller of their own.
                state.hub.forget(&id);
                let _ = tx.send(Polled::Failed(e.to_string()));
                return;
            }
        }
    }
}

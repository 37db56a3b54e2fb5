//! Prometheus metrics of the server and the worker (prometheus-client).
//!
//! | family | type | labels | who |
//! |---|---|---|---|
//! | `stagetime_runs` | gauge | `state` | both (from the store) |
//! | `stagetime_queue_ready` / `_in_flight` / `_delayed` | gauge | | both |
//! | `stagetime_queue_oldest_age_seconds` | gauge | | both |
//! | `stagetime_transitions_total` | counter | | worker |
//! | `stagetime_runs_finished_total` | counter | `state` | worker |
//! | `stagetime_task_duration_seconds` | histogram | `status` | worker |
//! | `stagetime_backend_errors_total` | counter | `op` | worker |
//! | `stagetime_store_errors_total` | counter | `op` | both |
//! | `stagetime_commit_conflicts_total` | counter | | worker |
//! | `stagetime_grpc_requests_total` | counter | `method`, `code` | server |
//! | `stagetime_store_data_lost_total` | counter | | both (the store's epoch changed: Redis lost its data) |
//! | `stagetime_runs_quarantined_total` | counter | | worker (runs failed with an internal error instead of crashing the worker) |
//!
//! Calls refused for want of a valid token are counted with `method` =
//! `<service>/*` (they never reach a method).
//!
//! `rate(stagetime_transitions_total[1m])` is the transitions per second.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use stagetime_core::Error;
use stagetime_core::engine::{Clock, EngineListener, SystemClock};
use stagetime_core::store::{EpochWatch, RunRecord, Store};
use tracing::debug;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.1 s .. ~ 1.8 h
    Histogram::new(exponential_buckets(0.1, 2.0, 17))
}

/// The metric families; cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    runs: Family<Labels, Gauge>,
    queue_ready: Gauge,
    queue_in_flight: Gauge,
    queue_delayed: Gauge,
    queue_oldest_age: Gauge<f64, AtomicU64>,
    transitions: Counter,
    runs_finished: Family<Labels, Counter>,
    task_duration: HistogramFamily,
    backend_errors: Family<Labels, Counter>,
    store_errors: Family<Labels, Counter>,
    conflicts: Counter,
    grpc_requests: Family<Labels, Counter>,
    store_data_lost: Counter,
    quarantined: Counter,
    epoch: Arc<EpochWatch>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            runs: Family::default(),
            queue_ready: Gauge::default(),
            queue_in_flight: Gauge::default(),
            queue_delayed: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            transitions: Counter::default(),
            runs_finished: Family::default(),
            task_duration: Family::new_with_constructor(duration_histogram),
            backend_errors: Family::default(),
            store_errors: Family::default(),
            conflicts: Counter::default(),
            grpc_requests: Family::default(),
            store_data_lost: Counter::default(),
            quarantined: Counter::default(),
            epoch: Arc::new(EpochWatch::default()),
        };
        registry.register("stagetime_runs", "Stored runs by state", m.runs.clone());
        registry.register(
            "stagetime_queue_ready",
            "Work items due and not yet handed out",
            m.queue_ready.clone(),
        );
        registry.register(
            "stagetime_queue_in_flight",
            "Work items handed out and not yet acknowledged",
            m.queue_in_flight.clone(),
        );
        registry.register(
            "stagetime_queue_delayed",
            "Work items waiting for their due time",
            m.queue_delayed.clone(),
        );
        registry.register(
            "stagetime_queue_oldest_age_seconds",
            "Age of the oldest work item ready or in flight",
            m.queue_oldest_age.clone(),
        );
        registry.register(
            "stagetime_transitions",
            "Run transitions committed by this process",
            m.transitions.clone(),
        );
        registry.register(
            "stagetime_runs_finished",
            "Runs this process saw finish, by final state",
            m.runs_finished.clone(),
        );
        registry.register(
            "stagetime_task_duration_seconds",
            "Task durations from first launch to the end, by final status",
            m.task_duration.clone(),
        );
        registry.register(
            "stagetime_backend_errors",
            "Failed backend calls by operation",
            m.backend_errors.clone(),
        );
        registry.register(
            "stagetime_store_errors",
            "Failed store calls by operation",
            m.store_errors.clone(),
        );
        registry.register(
            "stagetime_commit_conflicts",
            "Commits that lost a compare-and-set race and were retried",
            m.conflicts.clone(),
        );
        registry.register(
            "stagetime_store_data_lost",
            "Times the store's data set was found wiped (its epoch changed): runs stored before are gone",
            m.store_data_lost.clone(),
        );
        registry.register(
            "stagetime_runs_quarantined",
            "Runs this process marked failed because processing them failed unexpectedly (a panic, a corrupt record)",
            m.quarantined.clone(),
        );
        registry.register(
            "stagetime_grpc_requests",
            "gRPC requests by method and status code",
            m.grpc_requests.clone(),
        );
        m
    }

    /// Counts one gRPC request.
    pub fn grpc_request(&self, method: &'static str, code: tonic::Code) {
        self.grpc_requests
            .get_or_create(&vec![
                ("method", method.to_string()),
                ("code", format!("{code:?}")),
            ])
            .inc();
    }

    /// When this process noticed that the store lost its data, if it did.
    pub fn store_lost_at_ms(&self) -> Option<u64> {
        self.epoch.lost_at_ms()
    }

    /// Compares the store's epoch with the first one seen: a change means
    /// Redis lost its data (restarted without persistence, flushed) —
    /// logged as an error and counted.
    ///
    /// # Errors
    /// The store's error (also counted as a store error `epoch`).
    pub async fn check_store_epoch(&self, store: &dyn Store) -> Result<(), Error> {
        let epoch = store
            .epoch()
            .await
            .inspect_err(|e| self.store_error("epoch", e))?;
        if self.epoch.changed(epoch.as_deref(), SystemClock.now_ms()) {
            self.store_data_lost.inc();
            tracing::error!(
                "the store lost its data (its epoch changed): every run stored before is gone; \
                 was Redis restarted without persistence or flushed?"
            );
        }
        Ok(())
    }

    /// Reads the store's figures into the gauges once, and checks that the
    /// store kept its data ([`Metrics::check_store_epoch`]).
    ///
    /// # Errors
    /// The store's error (also counted as a store error `stats`).
    pub async fn refresh_store(&self, store: &dyn Store) -> Result<(), Error> {
        self.check_store_epoch(store).await?;
        let stats = match store.stats(SystemClock.now_ms()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.store_error("stats", &e);
                return Err(e);
            }
        };
        for (state, n) in stats.runs_by_state {
            self.runs
                .get_or_create(&vec![("state", state.as_str().to_string())])
                .set(n as i64);
        }
        self.queue_ready.set(stats.queue.ready as i64);
        self.queue_in_flight.set(stats.queue.in_flight as i64);
        self.queue_delayed.set(stats.queue.delayed as i64);
        self.queue_oldest_age
            .set(stats.queue.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        Ok(())
    }

    /// Refreshes the store gauges every `every` until `shutdown` resolves.
    pub async fn refresh_store_every(
        self,
        store: Arc<dyn Store>,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let refresh = async {
            loop {
                if let Err(e) = self.refresh_store(&*store).await {
                    debug!(error = %e, "cannot read store figures for metrics");
                }
                tokio::time::sleep(every).await;
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = refresh => {}
        }
    }
}

impl EngineListener for Metrics {
    fn committed(&self, before: &RunRecord, after: &RunRecord) {
        self.transitions.inc();
        if after.state.is_finished() && !before.state.is_finished() {
            self.runs_finished
                .get_or_create(&vec![("state", after.state.as_str().to_string())])
                .inc();
        }
        let old = before.scheduler.tasks();
        for (i, t) in after.scheduler.tasks().iter().enumerate() {
            let was_terminal = old.get(i).is_some_and(|o| o.status.is_terminal());
            if !t.status.is_terminal() || was_terminal {
                continue;
            }
            let timing = after.timings.get(i);
            if let Some((start, end)) =
                timing.and_then(|t| Some((t.first_launch_ms?, t.finished_ms?)))
            {
                self.task_duration
                    .get_or_create(&vec![("status", t.status.as_str().to_string())])
                    .observe(end.saturating_sub(start) as f64 / 1000.0);
            }
        }
    }

    fn backend_error(&self, op: &'static str, _error: &Error) {
        self.backend_errors
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    fn store_error(&self, op: &'static str, _error: &Error) {
        self.store_errors
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    fn conflict(&self) {
        self.conflicts.inc();
    }

    fn quarantined(&self, _run: &stagetime_core::RunId, _reason: &str) {
        self.quarantined.inc();
    }
}

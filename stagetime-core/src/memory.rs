//! `MemoryStore`: the embedded, single-process [`Store`].
//!
//! Everything lives behind one mutex; a [`Notify`] wakes claimers when work
//! arrives. Semantics match the Redis store (the same conformance suite runs
//! against both), so the embedded mode is a faithful rehearsal.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::backend::LaunchKey;
use crate::error::{Error, Result};
use crate::store::{
    ClaimToken, Claimed, Commit, Created, DEFAULT_RECLAIM_AFTER, DEFAULT_RETENTION, Delivery,
    DeliveryState, QueueStats, RUN_STATES, RunFilter, RunId, RunPage, RunRecord, Store, StoreStats,
    StoredLog, WorkItem,
};

/// Default page size of [`Store::list_runs`].
const DEFAULT_PAGE: usize = 100;

#[derive(Debug)]
struct Pending {
    item: WorkItem,
    claimed_at_ms: u64,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<RunId, RunRecord>,
    /// (created_ms, id) for listing newest first.
    by_created: BTreeSet<(u64, RunId)>,
    ready: VecDeque<(u64, WorkItem, u32)>,
    delayed: BTreeMap<(u64, u64), WorkItem>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    /// Webhook deliveries by id, with the instant they are forgotten.
    deliveries: HashMap<String, (Delivery, Instant)>,
    /// (received ms, id) of the deliveries, for listing.
    deliveries_by_time: BTreeSet<(u64, String)>,
    /// Forge report records by subject: (record, open, forgotten at).
    reports: BTreeMap<String, (String, bool, Instant)>,
    /// Each run's attempt logs, by (task, attempt): deleted with the run.
    logs: HashMap<RunId, HashMap<(String, u32), KeptLog>>,
}

/// The kept tail of one attempt's log.
#[derive(Debug, Default)]
struct KeptLog {
    tail: VecDeque<u8>,
    /// Bytes written in all; the tail is the last `tail.len()` of them.
    end: u64,
    ended: bool,
}

impl Inner {
    fn push(&mut self, item: WorkItem) {
        self.next_seq += 1;
        let seq = self.next_seq;
        match item.due_ms {
            Some(due) => {
                self.delayed.insert((due, seq), item);
            }
            None => self.ready.push_back((seq, item, 0)),
        }
    }

    /// Forgets deliveries whose time is up.
    fn expire_deliveries(&mut self, now: Instant) {
        let expired: Vec<(u64, String)> = self
            .deliveries
            .iter()
            .filter(|(_, (d, until))| *until <= now && d.state != DeliveryState::Pending)
            .map(|(id, (d, _))| (d.received_ms, id.clone()))
            .collect();
        for key in expired {
            self.deliveries.remove(&key.1);
            self.deliveries_by_time.remove(&key);
        }
    }

    fn ack(&mut self, tokens: &[ClaimToken]) {
        for t in tokens {
            if let Ok(seq) = t.0.parse::<u64>() {
                self.pending.remove(&seq);
            }
        }
    }
}

/// The in-memory store for embedded runs and tests.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    notify: Notify,
    reclaim_after: Duration,
    retention: Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default reclaim time and retention.
    pub fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            reclaim_after: DEFAULT_RECLAIM_AFTER,
            retention: DEFAULT_RETENTION,
        }
    }

    /// Sets how long a claimed item may stay unacknowledged before it is handed out again.
    pub fn with_reclaim_after(mut self, d: Duration) -> Self {
        self.reclaim_after = d;
        self
    }

    /// Sets how long finished runs are kept.
    pub fn with_retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated in a
        // way that matters more than losing the process; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what is available at `now_ms`; returns the next due time otherwise.
    fn take(&self, max: usize, now_ms: u64) -> (Vec<Claimed>, Option<u64>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let due: Vec<(u64, u64)> = inner
            .delayed
            .range(..=(now_ms, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(item) = inner.delayed.remove(&key) {
                inner.ready.push_back((key.1, item, 0));
            }
        }
        let mut out = Vec::new();
        let reclaim_ms = crate::limits::millis(self.reclaim_after);
        for (seq, p) in inner.pending.iter_mut() {
            if out.len() >= max {
                break;
            }
            if p.claimed_at_ms.saturating_add(reclaim_ms) <= now_ms {
                p.claimed_at_ms = now_ms;
                p.deliveries += 1;
                out.push(Claimed {
                    token: ClaimToken(seq.to_string()),
                    item: p.item.clone(),
                    deliveries: p.deliveries,
                });
            }
        }
        while out.len() < max {
            let Some((seq, item, deliveries)) = inner.ready.pop_front() else {
                break;
            };
            inner.pending.insert(
                seq,
                Pending {
                    item: item.clone(),
                    claimed_at_ms: now_ms,
                    deliveries: deliveries + 1,
                },
            );
            out.push(Claimed {
                token: ClaimToken(seq.to_string()),
                item,
                deliveries: deliveries + 1,
            });
        }
        let next_due = inner.delayed.keys().next().map(|k| k.0);
        let next_reclaim = inner
            .pending
            .values()
            .map(|p| p.claimed_at_ms.saturating_add(reclaim_ms))
            .min();
        let next = match (next_due, next_reclaim) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (out, next)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_run(&self, record: RunRecord, start: Vec<WorkItem>) -> Result<Created> {
        let mut inner = self.lock();
        if let Some(existing) = inner.runs.get(&record.id) {
            return Ok(Created {
                record: existing.clone(),
                created: false,
            });
        }
        inner
            .by_created
            .insert((record.created_ms, record.id.clone()));
        inner.runs.insert(record.id.clone(), record.clone());
        for item in start {
            inner.push(item);
        }
        drop(inner);
        self.notify.notify_waiters();
        Ok(Created {
            record,
            created: true,
        })
    }

    async fn load_run(&self, id: &RunId) -> Result<RunRecord> {
        self.lock()
            .runs
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("run {id}")))
    }

    async fn commit(&self, commit: Commit) -> Result<()> {
        let mut inner = self.lock();
        let id = commit.record.id.clone();
        let Some(current) = inner.runs.get(&id) else {
            return Err(Error::not_found(format!("run {id}")));
        };
        if current.version != commit.expected_version
            || commit.record.version != commit.expected_version + 1
        {
            return Err(Error::version_conflict(
                format!("run {id}"),
                commit.expected_version,
                current.version,
            ));
        }
        inner.runs.insert(id, commit.record);
        for item in commit.enqueue {
            inner.push(item);
        }
        inner.ack(&commit.ack);
        drop(inner);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn enqueue(&self, items: Vec<WorkItem>) -> Result<()> {
        let mut inner = self.lock();
        for item in items {
            inner.push(item);
        }
        drop(inner);
        self.notify.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        _consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Claimed>> {
        let started = tokio::time::Instant::now();
        loop {
            // Register interest before looking, so a notify between the look
            // and the wait is not lost.
            let notified = self.notify.notified();
            let elapsed = started.elapsed();
            let now = crate::limits::due_ms(now_ms, elapsed);
            let (out, next) = self.take(max.max(1), now);
            if !out.is_empty() || elapsed >= wait {
                return Ok(out);
            }
            let mut sleep = wait - elapsed;
            if let Some(next) = next {
                sleep = sleep.min(Duration::from_millis(next.saturating_sub(now).max(1)));
            }
            let _ = tokio::time::timeout(sleep, notified).await;
        }
    }

    async fn ack(&self, tokens: &[ClaimToken]) -> Result<()> {
        self.lock().ack(tokens);
        Ok(())
    }

    async fn renew_claims(&self, tokens: &[ClaimToken], now_ms: u64) -> Result<()> {
        let mut inner = self.lock();
        for t in tokens {
            if let Ok(seq) = t.0.parse::<u64>()
                && let Some(p) = inner.pending.get_mut(&seq)
            {
                p.claimed_at_ms = p.claimed_at_ms.max(now_ms);
            }
        }
        Ok(())
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        let inner = self.lock();
        let limit = if filter.limit == 0 {
            DEFAULT_PAGE
        } else {
            filter.limit
        };
        let upper = match &filter.after {
            None => None,
            Some(cursor) => Some(parse_cursor(cursor)?),
        };
        let mut runs = Vec::new();
        let mut next = None;
        let range: Box<dyn Iterator<Item = &(u64, RunId)>> = match &upper {
            Some(key) => Box::new(inner.by_created.range(..key.clone()).rev()),
            None => Box::new(inner.by_created.iter().rev()),
        };
        for key in range {
            let summary = inner.runs[&key.1].summary();
            if !filter.matches(&summary) {
                continue;
            }
            if runs.len() == limit {
                next = runs
                    .last()
                    .map(|s: &crate::store::RunSummary| format!("{}:{}", s.created_ms, s.id));
                break;
            }
            runs.push(summary);
        }
        Ok(RunPage { runs, next })
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<u64> {
        let mut inner = self.lock();
        let retention = crate::limits::millis(self.retention);
        let expired: Vec<(u64, RunId)> = inner
            .runs
            .values()
            .filter(|r| {
                r.finished_ms
                    .is_some_and(|f| f.saturating_add(retention) <= now_ms)
            })
            .map(|r| (r.created_ms, r.id.clone()))
            .collect();
        for key in &expired {
            inner.runs.remove(&key.1);
            inner.by_created.remove(key);
            inner.logs.remove(&key.1);
        }
        let gone: BTreeSet<&RunId> = expired.iter().map(|k| &k.1).collect();
        let inner = &mut *inner;
        inner.ready.retain(|(_, item, _)| !gone.contains(&item.run));
        inner.delayed.retain(|_, item| !gone.contains(&item.run));
        inner.pending.retain(|_, p| !gone.contains(&p.item.run));
        Ok(expired.len() as u64)
    }

    /// Counts in memory (one pass over the runs). Delayed items already due
    /// count as ready. The oldest age is that of the longest-held claim
    /// (this store keeps no enqueue times); `None` when nothing is claimed.
    async fn record_delivery(&self, delivery: Delivery, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire_deliveries(now);
        if inner.deliveries.contains_key(&delivery.id) {
            return Ok(false);
        }
        let delivery = Delivery {
            state: DeliveryState::Pending,
            ..delivery
        };
        inner
            .deliveries_by_time
            .insert((delivery.received_ms, delivery.id.clone()));
        inner
            .deliveries
            .insert(delivery.id.clone(), (delivery, now + ttl));
        Ok(true)
    }

    async fn pending_deliveries(&self, max: usize) -> Result<Vec<Delivery>> {
        let mut inner = self.lock();
        // A pending delivery outlives its ttl until settled (as in Redis,
        // where the pending list holds the whole record).
        let inner = &mut *inner;
        Ok(inner
            .deliveries_by_time
            .iter()
            .filter_map(|(_, id)| inner.deliveries.get(id))
            .filter(|(d, _)| d.state == DeliveryState::Pending)
            .take(max)
            .map(|(d, _)| d.clone())
            .collect())
    }

    async fn settle_delivery(&self, delivery: Delivery) -> Result<()> {
        let mut inner = self.lock();
        if let Some((stored, _)) = inner.deliveries.get_mut(&delivery.id) {
            *stored = delivery;
        }
        Ok(())
    }

    async fn list_deliveries(&self, max: usize) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .deliveries_by_time
            .iter()
            .rev()
            .filter_map(|(_, id)| inner.deliveries.get(id))
            .filter(|(d, until)| *until > now || d.state == DeliveryState::Pending)
            .take(max)
            .map(|(d, _)| d.clone())
            .collect())
    }

    async fn append_log(
        &self,
        key: &LaunchKey,
        at: u64,
        text: &[u8],
        end: bool,
        keep: usize,
    ) -> Result<()> {
        let mut inner = self.lock();
        if !inner.runs.contains_key(&key.run) {
            return Err(Error::not_found(format!("run {}", key.run)));
        }
        let log = inner
            .logs
            .entry(key.run.clone())
            .or_default()
            .entry((key.task.clone(), key.attempt))
            .or_default();
        let new_end = at.saturating_add(text.len() as u64);
        if at > log.end {
            // A gap: what is kept must be contiguous.
            log.tail.clear();
            log.tail.extend(text);
            log.end = new_end;
        } else if new_end > log.end {
            let skip = (log.end - at) as usize;
            log.tail.extend(&text[skip..]);
            log.end = new_end;
        }
        if log.tail.len() > keep {
            let excess = log.tail.len() - keep;
            log.tail.drain(..excess);
        }
        log.ended |= end;
        Ok(())
    }

    async fn read_log(&self, key: &LaunchKey, from: u64) -> Result<Option<StoredLog>> {
        let inner = self.lock();
        let Some(log) = inner
            .logs
            .get(&key.run)
            .and_then(|logs| logs.get(&(key.task.clone(), key.attempt)))
        else {
            return Ok(None);
        };
        let kept_start = log.end - log.tail.len() as u64;
        let start = from.clamp(kept_start, log.end);
        Ok(Some(StoredLog {
            bytes: log
                .tail
                .iter()
                .skip((start - kept_start) as usize)
                .copied()
                .collect(),
            start,
            end: log.end,
            ended: log.ended,
        }))
    }

    async fn track_report(&self, subject: &str, record: String, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.reports.retain(|_, (_, _, until)| *until > now);
        if inner.reports.contains_key(subject) {
            return Ok(false);
        }
        inner
            .reports
            .insert(subject.to_string(), (record, true, now + ttl));
        Ok(true)
    }

    async fn save_report(&self, subject: &str, record: String, open: bool) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.reports.get_mut(subject) {
            Some(entry) if entry.2 > now => {
                entry.0 = record;
                entry.1 = open;
                Ok(true)
            }
            _ => {
                inner.reports.remove(subject);
                Ok(false)
            }
        }
    }

    async fn open_reports(&self, max: usize) -> Result<Vec<(String, String)>> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .reports
            .iter()
            .filter(|(_, (_, open, until))| *open && *until > now)
            .take(max)
            .map(|(k, (r, _, _))| (k.clone(), r.clone()))
            .collect())
    }

    async fn load_report(&self, subject: &str) -> Result<Option<String>> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .reports
            .get(subject)
            .filter(|(_, _, until)| *until > now)
            .map(|(r, _, _)| r.clone()))
    }

    async fn stats(&self, now_ms: u64) -> Result<Option<StoreStats>> {
        let inner = self.lock();
        let due = inner.delayed.range(..=(now_ms, u64::MAX)).count() as u64;
        let queue = QueueStats {
            ready: inner.ready.len() as u64 + due,
            in_flight: inner.pending.len() as u64,
            delayed: inner.delayed.len() as u64 - due,
            oldest_age_ms: inner
                .pending
                .values()
                .map(|p| now_ms.saturating_sub(p.claimed_at_ms))
                .max(),
        };
        let mut counts = [0u64; RUN_STATES.len()];
        for r in inner.runs.values() {
            if let Some(i) = RUN_STATES.iter().position(|s| *s == r.state) {
                counts[i] += 1;
            }
        }
        Ok(Some(StoreStats {
            queue,
            runs_by_state: RUN_STATES.into_iter().zip(counts).collect(),
        }))
    }
}

fn parse_cursor(cursor: &str) -> Result<(u64, RunId)> {
    let bad = || {
        let mut e = crate::FieldErrors::default();
        e.push(
            "after",
            format!("{cursor:?} is not a cursor returned by list"),
        );
        Error::Invalid(e)
    };
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    Ok((
        ms.parse().map_err(|_| bad())?,
        RunId::new(id).map_err(|_| bad())?,
    ))
}

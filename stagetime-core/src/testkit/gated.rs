//! A store that hands every call to another one, with a gate before each
//! claim: to inject claim faults, or to hold workers back until a test or a
//! load generator is ready.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::store::{
    ClaimToken, Claimed, Commit, Created, RunFilter, RunId, RunPage, RunRecord, Store, StoreStats,
    WorkItem,
};

/// What a [`GatedStore`] asks before each claim (with the claim's arguments).
#[async_trait]
pub trait ClaimGate: Send + Sync + 'static {
    /// `Ok` lets the claim through to the inner store; an error is the
    /// claim's answer.
    ///
    /// # Errors
    /// Whatever the gate decides.
    async fn before_claim(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<()>;
}

/// Claims wait until the value is `true` (send `true` to open the gate).
#[async_trait]
impl ClaimGate for tokio::sync::watch::Receiver<bool> {
    async fn before_claim(&self, _: &str, _: usize, _: u64, _: Duration) -> Result<()> {
        if !*self.borrow() {
            let mut open = self.clone();
            let _ = open.wait_for(|o| *o).await;
        }
        Ok(())
    }
}

/// `inner`, with `gate` asked before every claim; every other call goes
/// straight through.
pub struct GatedStore<G, S: ?Sized> {
    /// Asked before each claim.
    pub gate: G,
    /// The store doing the work (shared: the caller may use it directly).
    pub inner: Arc<S>,
}

#[async_trait]
impl<G: ClaimGate, S: Store + ?Sized> Store for GatedStore<G, S> {
    async fn record_delivery(
        &self,
        delivery: crate::store::Delivery,
        ttl: Duration,
    ) -> Result<bool> {
        self.inner.record_delivery(delivery, ttl).await
    }
    async fn pending_deliveries(&self, max: usize) -> Result<Vec<crate::store::Delivery>> {
        self.inner.pending_deliveries(max).await
    }
    async fn settle_delivery(&self, delivery: crate::store::Delivery) -> Result<()> {
        self.inner.settle_delivery(delivery).await
    }
    async fn list_deliveries(&self, max: usize) -> Result<Vec<crate::store::Delivery>> {
        self.inner.list_deliveries(max).await
    }
    async fn track_report(
        &self,
        subject: &str,
        record: String,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        self.inner.track_report(subject, record, ttl).await
    }
    async fn save_report(&self, subject: &str, record: String, open: bool) -> Result<bool> {
        self.inner.save_report(subject, record, open).await
    }
    async fn open_reports(&self, max: usize) -> Result<Vec<(String, String)>> {
        self.inner.open_reports(max).await
    }
    async fn load_report(&self, subject: &str) -> Result<Option<String>> {
        self.inner.load_report(subject).await
    }
    async fn create_run(&self, record: RunRecord, start: Vec<WorkItem>) -> Result<Created> {
        self.inner.create_run(record, start).await
    }
    async fn load_run(&self, id: &RunId) -> Result<RunRecord> {
        self.inner.load_run(id).await
    }
    async fn commit(&self, commit: Commit) -> Result<()> {
        self.inner.commit(commit).await
    }
    async fn enqueue(&self, items: Vec<WorkItem>) -> Result<()> {
        self.inner.enqueue(items).await
    }
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Claimed>> {
        self.gate.before_claim(consumer, max, now_ms, wait).await?;
        self.inner.claim(consumer, max, now_ms, wait).await
    }
    async fn ack(&self, tokens: &[ClaimToken]) -> Result<()> {
        self.inner.ack(tokens).await
    }
    async fn renew_claims(&self, tokens: &[ClaimToken], now_ms: u64) -> Result<()> {
        self.inner.renew_claims(tokens, now_ms).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        self.inner.list_runs(filter).await
    }
    async fn purge_expired(&self, now_ms: u64) -> Result<u64> {
        self.inner.purge_expired(now_ms).await
    }
    async fn append_log(
        &self,
        key: &crate::backend::LaunchKey,
        at: u64,
        text: &[u8],
        end: bool,
        keep: usize,
    ) -> Result<()> {
        self.inner.append_log(key, at, text, end, keep).await
    }
    async fn read_log(
        &self,
        key: &crate::backend::LaunchKey,
        from: u64,
    ) -> Result<Option<crate::store::StoredLog>> {
        self.inner.read_log(key, from).await
    }
    async fn run_version(&self, id: &RunId) -> Result<u64> {
        self.inner.run_version(id).await
    }
    async fn stats(&self, now_ms: u64) -> Result<Option<StoreStats>> {
        self.inner.stats(now_ms).await
    }
}

//! Task logs: what one attempt of a task wrote, as a stream of chunks.
//!
//! Every edge that shows logs (the `logs` gRPC stream and CLI command, the
//! web page, forge reports) reads them through one [`LogSource`]; where the
//! bytes come from (a local child's output, a Tekton pod's containers, the
//! archived tail kept in the store after housekeeping) is the source's
//! business, not the reader's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation,
};
use crate::error::{Error, ErrorKind};
use crate::scheduler::TaskStatus;
use crate::store::{RunRecord, Store};
use crate::{Result, RunId};

/// Which logs to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// The run.
    pub run: RunId,
    /// One task, or every task of the run (in stage order) when `None`.
    pub task: Option<String>,
    /// One attempt (1-based), or the latest attempt when `None`.
    pub attempt: Option<u32>,
    /// Keep the stream open while the attempt runs, ending it when the
    /// attempt ends; without it the stream ends with what exists now.
    pub follow: bool,
}

impl LogQuery {
    /// Every task's latest attempt, not following.
    pub fn run(run: RunId) -> Self {
        Self {
            run,
            task: None,
            attempt: None,
            follow: false,
        }
    }

    /// One task's latest attempt, not following.
    pub fn task(run: RunId, task: impl Into<String>) -> Self {
        Self {
            run,
            task: Some(task.into()),
            attempt: None,
            follow: false,
        }
    }
}

/// A piece of one attempt's output, in order within that attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The task that wrote it.
    pub task: String,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The step (a Tekton step's container, `taskrun/step`), when the
    /// backend has steps.
    pub step: Option<String>,
    /// The text: whole lines where the source can tell, UTF-8 (invalid bytes
    /// replaced).
    pub text: String,
}

/// Where logs are read from. Object safe, so edges hold `Arc<dyn LogSource>`.
#[async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// Opens the logs `query` selects. Read-only and repeatable: opening the
    /// same query twice yields the same chunks (plus, when following, what
    /// was written since).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown run, task or attempt;
    /// [`crate::Error::Unsupported`] when this source cannot read that
    /// attempt's logs; [`crate::Error::Unavailable`] when where they live
    /// cannot be reached now. Errors inside the stream end it.
    async fn open(&self, query: LogQuery) -> Result<BoxStream<'static, Result<LogChunk>>>;
}

/// A log stream, as [`LogSource::open`] yields it.
pub type LogStream = BoxStream<'static, Result<LogChunk>>;

/// How often followers poll the store (for new bytes, a new attempt, the end).
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Chunks handed between a producer task and its stream.
const STREAM_BUFFER: usize = 64;

/// The longest text held back waiting for the end of a line.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

impl LogQuery {
    /// The query for exactly one attempt.
    pub fn attempt(key: &LaunchKey, follow: bool) -> Self {
        Self {
            run: key.run.clone(),
            task: Some(key.task.clone()),
            attempt: Some(key.attempt),
            follow,
        }
    }
}

/// Turns bytes, arriving in pieces that may split lines and characters,
/// into text of whole lines (a line longer than 64 KiB is cut).
#[derive(Debug, Default)]
pub struct LineDecoder {
    pending: Vec<u8>,
}

impl LineDecoder {
    /// Takes `bytes`; returns the whole lines now complete (empty when none).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let cut = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() > MAX_PARTIAL_LINE => {
                // Cut before an unfinished character, so it is not mangled.
                let mut cut = self.pending.len();
                while cut > 0
                    && cut > self.pending.len() - 4
                    && (self.pending[cut - 1] & 0xC0) == 0x80
                {
                    cut -= 1;
                }
                if cut > 0 && self.pending[cut - 1] >= 0xC0 {
                    cut -= 1;
                }
                cut
            }
            None => 0,
        };
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    /// What is left (an unfinished last line), emptying the decoder.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// A stream fed by a spawned producer: the producer's sends fail (and it
/// stops) once the reader drops the stream.
fn channel_stream<F, Fut>(produce: F) -> LogStream
where
    F: FnOnce(mpsc::Sender<Result<LogChunk>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(produce(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// True when attempt `attempt` of `task` will write nothing more: a later
/// attempt exists, the task is no longer running it, or the run is over.
fn attempt_over(record: &RunRecord, task: &str, attempt: u32) -> bool {
    if record.state.is_finished() {
        return true;
    }
    record.task(task).is_none_or(|t| {
        t.attempts > attempt || (t.attempts == attempt && t.status != TaskStatus::Running)
    })
}

/// A stream of the chunks a producer sends (see [`LogStream`]); for
/// sources of this crate's kind elsewhere (the Tekton one).
pub fn spawn_log_stream<F, Fut>(produce: F) -> LogStream
where
    F: FnOnce(mpsc::Sender<Result<LogChunk>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    channel_stream(produce)
}

/// One attempt's log from the store, as chunks of whole lines; following
/// polls until the writer marks the log complete (or the attempt is over
/// and its writer is gone).
fn store_attempt(store: Arc<dyn Store>, key: LaunchKey, follow: bool) -> LogStream {
    channel_stream(move |tx| async move {
        let mut offset = 0u64;
        let mut decoder = LineDecoder::default();
        loop {
            // The record first: an attempt over before the read has
            // written all it will by the time of the read.
            let over = if follow {
                match store.load_run(&key.run).await {
                    Ok(record) => attempt_over(&record, &key.task, key.attempt),
                    Err(e) if e.kind() == ErrorKind::NotFound => true,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            } else {
                true
            };
            let log = match store.read_log(&key, offset).await {
                Ok(log) => log,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let ended = log.as_ref().is_some_and(|l| l.ended);
            if let Some(mut log) = log {
                let mut text = String::new();
                if log.start > offset {
                    // Bytes this reader had not read are no longer kept (the
                    // head of a long log, or a follower left behind): say
                    // so, and go on at a whole line.
                    let skip = log
                        .bytes
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(log.bytes.len(), |i| i + 1);
                    log.bytes.drain(..skip);
                    decoder = LineDecoder::default();
                    text.push_str(&format!(
                        "[stagetime: {} bytes of this log were not kept]\n",
                        log.start + skip as u64 - offset
                    ));
                }
                offset = log.end;
                text.push_str(&decoder.push(&log.bytes));
                if !text.is_empty() && tx.send(Ok(chunk(&key, text))).await.is_err() {
                    return;
                }
            }
            if ended || over {
                let rest = decoder.finish();
                if !rest.is_empty() {
                    let _ = tx.send(Ok(chunk(&key, rest))).await;
                }
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    })
}

fn chunk(key: &LaunchKey, text: String) -> LogChunk {
    LogChunk {
        task: key.task.clone(),
        attempt: key.attempt,
        step: None,
        text,
    }
}

/// Opens one attempt's log (the part a source adds to the walk over a run).
type OpenAttempt =
    Arc<dyn Fn(LaunchKey, bool) -> BoxFuture<'static, Result<LogStream>> + Send + Sync>;

/// The tasks a query names, in stage order (stages ascending, then
/// `finally`; document order within), checked against the run.
fn tasks_of(record: &RunRecord, query: &LogQuery) -> Result<Vec<String>> {
    if let Some(task) = &query.task {
        if record.task(task).is_none() {
            return Err(Error::not_found(format!(
                "task {task:?} of run {} (its tasks: {})",
                record.id,
                record
                    .tasks()
                    .map(|t| t.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(attempt) = query.attempt {
            let made = record.task(task).map_or(0, |t| t.attempts);
            if attempt == 0 || (!query.follow && attempt > made) {
                return Err(Error::not_found(format!(
                    "attempt {attempt} of task {task:?} of run {} (it has {made})",
                    record.id
                )));
            }
        }
        return Ok(vec![task.clone()]);
    }
    let mut tasks: Vec<(bool, f64, usize, String)> = record
        .tasks()
        .enumerate()
        .map(|(i, t)| {
            (
                t.is_finally,
                t.spec.stage.map_or(0.0, |s| s.as_f64()),
                i,
                t.name().to_string(),
            )
        })
        .collect();
    tasks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(tasks.into_iter().map(|t| t.3).collect())
}

/// The walk over a run every source here shares: resolves `query` with the
/// run's record, then streams each selected attempt through `open`, in
/// stage order; following waits for tasks to start, goes on to the next
/// attempt of a retried task, and ends when the last selected attempt has.
async fn walk_run(store: Arc<dyn Store>, query: LogQuery, open: OpenAttempt) -> Result<LogStream> {
    let record = store.load_run(&query.run).await?;
    let tasks = tasks_of(&record, &query)?;
    Ok(channel_stream(move |tx| async move {
        let fail = |e: Error| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Err(e)).await;
            }
        };
        for task in tasks {
            let mut next = query.attempt;
            loop {
                let record = match store.load_run(&query.run).await {
                    Ok(r) => r,
                    Err(e) => return fail(e).await,
                };
                let Some(t) = record.task(&task) else { break };
                let made = t.attempts;
                let attempt = match next {
                    Some(n) if n <= made => n,
                    Some(_) | None
                        if query.follow
                            && !t.status.is_terminal()
                            && !record.state.is_finished() =>
                    {
                        // Not started yet (or between attempts): wait.
                        if made > 0 && next.is_none() {
                            made
                        } else {
                            tokio::time::sleep(FOLLOW_POLL).await;
                            if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                    }
                    Some(_) => break,
                    None if made == 0 => break,
                    None => made,
                };
                let key = LaunchKey {
                    run: query.run.clone(),
                    task: task.clone(),
                    attempt,
                };
                let mut stream = match open(key, query.follow).await {
                    Ok(s) => s,
                    Err(e) => return fail(e).await,
                };
                while let Some(item) = stream.next().await {
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
                if !query.follow || query.attempt.is_some() {
                    break;
                }
                // Following the latest attempt: go on to a retry, if one comes.
                next = Some(attempt + 1);
            }
        }
    }))
}

/// Logs kept in the store: each attempt's archived tail, and — for
/// attempts whose output only a worker can read (the local backend in
/// distributed mode) — the live feed its worker appends while it runs
/// ([`LogCapture`]). Works after housekeeping deleted attempt directories
/// and PipelineRuns, until the run itself expires.
#[derive(Clone)]
pub struct StoreLogSource {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for StoreLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLogSource").finish_non_exhaustive()
    }
}

impl StoreLogSource {
    /// Reads logs from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl LogSource for StoreLogSource {
    async fn open(&self, query: LogQuery) -> Result<LogStream> {
        let store = Arc::clone(&self.store);
        let open: OpenAttempt = Arc::new(move |key, follow| {
            let store = Arc::clone(&store);
            Box::pin(async move { Ok(store_attempt(store, key, follow)) })
        });
        walk_run(Arc::clone(&self.store), query, open).await
    }
}

/// Reads each attempt from a live source (a Tekton pod's containers) and
/// falls back to the store's archive when the live source has nothing for
/// it any more (housekeeping deleted the PipelineRun and its pods) or
/// cannot be reached.
#[derive(Clone)]
pub struct LiveFirstLogSource {
    store: Arc<dyn Store>,
    live: Arc<dyn LogSource>,
}

impl std::fmt::Debug for LiveFirstLogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFirstLogSource").finish_non_exhaustive()
    }
}

impl LiveFirstLogSource {
    /// `live` first (asked for one attempt at a time), then `store`'s
    /// archive; `store` also resolves which attempts a query selects.
    pub fn new(store: Arc<dyn Store>, live: Arc<dyn LogSource>) -> Self {
        Self { store, live }
    }
}

#[async_trait]
impl LogSource for LiveFirstLogSource {
    async fn open(&self, query: LogQuery) -> Result<LogStream> {
        let store = Arc::clone(&self.store);
        let live = Arc::clone(&self.live);
        let open: OpenAttempt = Arc::new(move |key, follow| {
            let store = Arc::clone(&store);
            let live = Arc::clone(&live);
            Box::pin(async move {
                // The archive first when it is complete: the attempt is
                // over and the live objects may go at any moment.
                // (Read from the end: only the flag crosses the network.)
                if let Ok(Some(log)) = store.read_log(&key, u64::MAX).await
                    && log.ended
                {
                    return Ok(store_attempt(store, key, follow));
                }
                match live.open(LogQuery::attempt(&key, follow)).await {
                    Ok(stream) => Ok(stream),
                    Err(e) => {
                        debug!(%key, error = %e, "live logs unavailable; reading the archive");
                        Ok(store_attempt(store, key, follow))
                    }
                }
            })
        });
        walk_run(Arc::clone(&self.store), query, open).await
    }
}

/// A chunk's text as the store keeps it: the archive has no steps, so
/// each line of a step's chunk is prefixed `[step] ` (as `tkn` shows them).
fn archived_text(chunk: LogChunk) -> String {
    match chunk.step {
        None => chunk.text,
        Some(step) => chunk
            .text
            .split_inclusive('\n')
            .map(|line| format!("[{step}] {line}"))
            .collect(),
    }
}

/// When [`LogCapture`] copies an attempt's output into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// While the attempt runs (following its source), so the store is also
    /// the live feed: for output only this process can read (a local
    /// child's log file).
    Live,
    /// Once, when the attempt has ended (its tail): for output readers can
    /// reach live by themselves (a Tekton pod's logs, through the API).
    AtEnd,
}

/// A [`Backend`] that keeps each attempt's log tail in the store with its
/// run: it copies what `source` reads for an attempt into
/// [`Store::append_log`] (live or at the end, per [`CaptureMode`]) and
/// passes an attempt's end on to observers only once its log is stored —
/// lines of a step (Tekton) kept prefixed `[step] ` —
/// so a reader that sees the attempt over finds its whole tail. Everything
/// else is `inner`'s. A log that cannot be stored is warned about; the
/// attempt's outcome is never held back for long (at most 30 s).
pub struct LogCapture {
    inner: Arc<dyn Backend>,
    shared: Arc<CaptureShared>,
}

struct CaptureShared {
    store: Arc<dyn Store>,
    source: Arc<dyn LogSource>,
    mode: CaptureMode,
    keep: usize,
    /// Live captures in progress (or done, until their end is observed).
    running: Mutex<HashMap<LaunchKey, Shared<BoxFuture<'static, ()>>>>,
}

/// How long an observation waits for its attempt's log to be stored.
const ARCHIVE_PATIENCE: Duration = Duration::from_secs(30);

impl LogCapture {
    /// Wraps `inner`: `source` reads its attempts (one attempt per query),
    /// the store keeps their last `keep` bytes.
    pub fn new(
        inner: Arc<dyn Backend>,
        store: Arc<dyn Store>,
        source: Arc<dyn LogSource>,
        mode: CaptureMode,
        keep: usize,
    ) -> Self {
        Self {
            inner,
            shared: Arc::new(CaptureShared {
                store,
                source,
                mode,
                keep,
                running: Mutex::default(),
            }),
        }
    }
}

impl CaptureShared {
    /// Follows the attempt's output into the store until it ends, writing
    /// what came every [`FOLLOW_POLL`] (a chatty attempt costs the store
    /// at most four writes of `keep` bytes a second).
    async fn capture_live(self: Arc<Self>, key: LaunchKey) {
        let mut stream = match self.source.open(LogQuery::attempt(&key, true)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(%key, error = %e, "cannot read the attempt's output to keep it");
                return;
            }
        };
        // Bytes read in all; the batch holds the last of them not yet
        // stored — at most `keep`, since the store keeps no more.
        let mut total = 0u64;
        let mut batch: VecDeque<u8> = VecDeque::new();
        let mut tick = tokio::time::interval(FOLLOW_POLL);
        loop {
            let next = tokio::select! {
                item = stream.next() => Some(item),
                _ = tick.tick() => None,
            };
            let done = match next {
                Some(Some(Ok(c))) => {
                    let text = archived_text(c);
                    total += text.len() as u64;
                    batch.extend(text.as_bytes());
                    if batch.len() > self.keep {
                        let excess = batch.len() - self.keep;
                        batch.drain(..excess);
                    }
                    continue;
                }
                Some(Some(Err(e))) => {
                    warn!(%key, error = %e, "reading the attempt's output failed; keeping what was read");
                    true
                }
                Some(None) => true,
                None => false,
            };
            if !batch.is_empty() || done {
                let at = total - batch.len() as u64;
                let bytes = batch.make_contiguous();
                match self
                    .store
                    .append_log(&key, at, bytes, done, self.keep)
                    .await
                {
                    Ok(()) => batch.clear(),
                    Err(e) => warn!(%key, error = %e, "cannot store the attempt's output"),
                }
            }
            if done {
                return;
            }
        }
    }

    /// Stores the tail of an attempt that has ended.
    async fn archive(&self, key: &LaunchKey) {
        let mut stream = match self.source.open(LogQuery::attempt(key, false)).await {
            Ok(s) => s,
            Err(e) => {
                debug!(%key, error = %e, "no output to keep for the attempt");
                return;
            }
        };
        let mut tail: VecDeque<u8> = VecDeque::new();
        let mut total = 0u64;
        while let Some(item) = stream.next().await {
            match item {
                Ok(c) => {
                    let text = archived_text(c);
                    total += text.len() as u64;
                    tail.extend(text.as_bytes());
                    if tail.len() > self.keep {
                        let excess = tail.len() - self.keep;
                        tail.drain(..excess);
                    }
                }
                Err(e) => {
                    warn!(%key, error = %e, "reading the attempt's output failed; keeping what was read");
                    break;
                }
            }
        }
        let tail: Vec<u8> = tail.into();
        let at = total - tail.len() as u64;
        if let Err(e) = self.store.append_log(key, at, &tail, true, self.keep).await {
            warn!(%key, error = %e, "cannot store the attempt's output");
        }
    }

    /// Makes sure the attempt's log is stored before its end is passed on.
    async fn settle(self: Arc<Self>, key: LaunchKey) {
        let capture = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let work = async {
            match capture {
                Some(c) => c.await,
                None => self.archive(&key).await,
            }
        };
        if tokio::time::timeout(ARCHIVE_PATIENCE, work).await.is_err() {
            warn!(%key, "storing the attempt's output takes too long; passing its end on");
        }
    }
}

#[async_trait]
impl Backend for LogCapture {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let key = request.key.clone();
        let launched = self.inner.launch(request).await?;
        // Only an attempt started here is followed: an adopted one may have
        // ended already (its end is archived when observed).
        if launched.created && self.shared.mode == CaptureMode::Live {
            let mut running = self
                .shared
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !running.contains_key(&key) {
                let task = tokio::spawn(Arc::clone(&self.shared).capture_live(key.clone()));
                let done: BoxFuture<'static, ()> = Box::pin(async move {
                    let _ = task.await;
                });
                running.insert(key, done.shared());
            }
        }
        Ok(launched)
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        self.inner.cancel(key).await
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        let shared = Arc::clone(&self.shared);
        self.inner
            .observe()
            .map(move |o| {
                let shared = Arc::clone(&shared);
                async move {
                    shared.settle(o.key.clone()).await;
                    o
                }
            })
            .buffer_unordered(32)
            .boxed()
    }

    /// The inner backend's, with the logs of attempts that ended while no
    /// process watched them stored first (those not stored already).
    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let found = self.inner.reconcile(run).await?;
        let shared = &self.shared;
        futures::stream::iter(&found)
            .for_each_concurrent(8, |o| async move {
                let stored = shared.store.read_log(&o.key, u64::MAX).await;
                if !matches!(stored, Ok(Some(ref log)) if log.ended) {
                    Arc::clone(shared).settle(o.key.clone()).await;
                }
            })
            .await;
        Ok(found)
    }

    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        self.inner.housekeeping(policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::LineDecoder;

    #[test]
    fn the_decoder_yields_whole_lines_and_never_splits_a_character() {
        let mut d = LineDecoder::default();
        assert_eq!(d.push(b"ab"), "");
        assert_eq!(d.push(b"c\nde"), "abc\n");
        // "é" is two bytes; arriving apart, it is decoded whole.
        assert_eq!(d.push(&[b'f', 0xC3]), "");
        assert_eq!(d.push(&[0xA9, b'\n']), "def\u{e9}\n");
        assert_eq!(d.push(b"tail"), "");
        assert_eq!(d.finish(), "tail");
        // A line longer than 64 KiB is cut before an unfinished character.
        let mut long = vec![b'x'; 64 * 1024];
        long.push(0xC3);
        let out = d.push(&long);
        assert_eq!(out.len(), 64 * 1024, "cut before the lone lead byte");
        assert_eq!(d.push(&[0xA9]), "");
        assert_eq!(d.finish(), "\u{e9}");
    }
}

//! [`RedisStore`]: the [`Store`] on Redis.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use serde::Deserialize;
use stagetime_core::backend::LaunchKey;
use stagetime_core::limits::millis;
use stagetime_core::store::{
    ClaimToken, Claimed, Commit, Created, Delivery, QueueStats, RECORD_FORMAT, RunFilter, RunId,
    RunPage, RunRecord, RunSummary, Store, StoreStats, StoredLog, WorkItem,
};
use stagetime_core::{Error, FieldErrors, Result};
use tracing::{debug, warn};

use crate::config::{RedisConfig, normalise_prefix};
use crate::error::{classify, unavailable_reply};
use crate::keys::{Keys, STATES};
use crate::scripts::Scripts;

/// Runs purged per script call.
const PURGE_BATCH: usize = 200;
/// Index members read per round trip while listing.
const LIST_CHUNK: usize = 200;
/// Largest page a listing returns.
const MAX_PAGE: usize = 1000;
/// How often a claim trims the stream.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Arguments per chunk of a variadic command (Lua's `unpack` has a limit).
const MAX_CHUNK: usize = 1000;

/// Figures about the work queue, for tests, benchmarks and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Entries in the work stream (`XLEN`).
    pub length: u64,
    /// Entries handed out and not acknowledged (`XPENDING`).
    pub pending: u64,
    /// Timers: delayed items and claim deadlines (`ZCARD`).
    pub timers: u64,
}

/// The [`Store`] on Redis ≥ 6.2 or Valkey. Cheap to share behind an `Arc`;
/// any number of stores (in any number of processes) may use one server.
///
/// Normal commands go through a reconnecting [`ConnectionManager`] with the
/// configured response timeout; waiting for work uses blocking `XREAD`s on
/// connections of their own with no response timeout.
pub struct RedisStore {
    config: RedisConfig,
    keys: Keys,
    client: Client,
    con: ConnectionManager,
    scripts: Scripts,
    blocking: Mutex<Vec<MultiplexedConnection>>,
    started: Instant,
    last_autoclaim_ms: AtomicU64,
    last_trim_ms: AtomicU64,
    nonce_base: u64,
    nonce: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.config.prefix)
            .field("group", &self.config.group)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, loads the scripts and creates the consumer group.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the connection manager spawns a task).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL; [`Error::Unavailable`] when
    /// Redis cannot be reached; [`Error::Forbidden`] when it refuses the
    /// credentials.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let store = Self::new(config)?;
        let mut con = store.con.clone();
        for script in store.scripts.all() {
            script
                .prepare_invoke()
                .load_async(&mut con)
                .await
                .map_err(|e| classify(e, "loading scripts"))?;
        }
        store.ensure_group().await?;
        Ok(store)
    }

    /// A store that connects on first use (no IO here): scripts are loaded
    /// and the consumer group is created when first needed. Useful when
    /// Redis may be down while a worker starts.
    ///
    /// # Panics
    /// Outside a Tokio runtime (the connection manager spawns a task).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL.
    pub fn new(mut config: RedisConfig) -> Result<Self> {
        config.prefix = normalise_prefix(std::mem::take(&mut config.prefix));
        if config.url.starts_with("rediss") {
            // One process-wide provider; a provider installed before is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match &config.tls_root_cert {
            Some(ca) => Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => Client::open(config.url.as_str()),
        }
        .map_err(|e| classify(e, "redis url"))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| classify(e, "redis connection"))?;
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let nonce_base = h.finish();
        Ok(RedisStore {
            keys: Keys::new(config.prefix.clone()),
            config,
            client,
            con,
            scripts: Scripts::new(),
            blocking: Mutex::new(Vec::new()),
            started: Instant::now(),
            last_autoclaim_ms: AtomicU64::new(0),
            last_trim_ms: AtomicU64::new(0),
            nonce_base,
            nonce: AtomicU64::new(0),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key layout in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Why the Redis server may lose data on a restart, if it may: neither
    /// an append-only file nor snapshots configured. `None` when it
    /// persists, or when `CONFIG` is not allowed (managed services) — then
    /// nothing can be told.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Redis cannot be reached.
    pub async fn persistence_warning(&self) -> Result<Option<String>> {
        let con = self.con.clone();
        let config = |name: &'static str| {
            let mut con = con.clone();
            async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async::<Vec<String>>(&mut con)
                    .await
            }
        };
        let (aof, save) = match (config("appendonly").await, config("save").await) {
            (Ok(a), Ok(s)) => (a, s),
            (Err(e), _) | (_, Err(e)) if e.is_io_error() || e.is_timeout() => {
                return Err(classify(e, "CONFIG GET"));
            }
            _ => return Ok(None),
        };
        let aof_on = aof.get(1).is_some_and(|v| v == "yes");
        let snapshots = save.get(1).is_some_and(|v| !v.trim().is_empty());
        Ok((!aof_on && !snapshots).then(|| {
            "redis keeps no append-only file and takes no snapshots: a restart loses every run \
             (set appendonly yes; see docs/redis.md)"
                .to_string()
        }))
    }

    /// Sizes of the work stream, its pending entries and the timers.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    pub async fn stream_stats(&self) -> Result<StreamStats> {
        let mut con = self.con.clone();
        let (length, pending, timers): (u64, Value, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(self.keys.stream())
            .cmd("XPENDING")
            .arg(self.keys.stream())
            .arg(&self.config.group)
            .cmd("ZCARD")
            .arg(self.keys.timers())
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "stream stats"))?;
        let pending = match pending {
            Value::Array(v) => v.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        Ok(StreamStats {
            length,
            pending,
            timers,
        })
    }

    async fn ensure_group(&self) -> Result<()> {
        let mut con = self.con.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream())
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            Err(e) => Err(classify(e, "creating the consumer group")),
        }
    }

    fn retention_ms(&self) -> u64 {
        millis(self.config.retention)
    }

    fn elapsed_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    /// True (once per period, across tasks) when a periodic chore is due.
    fn due(&self, last: &AtomicU64, every: Duration) -> bool {
        let now = self.elapsed_ms().max(1);
        let prev = last.load(Ordering::Relaxed);
        (prev == 0 || now.saturating_sub(prev) >= millis(every))
            && last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn delayed_member(&self, item: &WorkItem, json: &str) -> String {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        format!("d{:016x}{:08x}|{}|{}", self.nonce_base, n, item.run, json)
    }

    /// Splits items into now items `(run, json)` and delayed `(due, member)`.
    /// An invocation of a per-run script with the keys every such script
    /// takes first, in this order: run, run's delayed set, stream, timers,
    /// finished, gc.
    fn run_invocation<'a>(
        &self,
        script: &'a redis::Script,
        id: &RunId,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.run(id))
            .key(self.keys.run_delayed(id))
            .key(self.keys.stream())
            .key(self.keys.timers())
            .key(self.keys.finished())
            .key(self.keys.gc());
        inv
    }

    fn encode_items(&self, items: &[WorkItem]) -> Result<Encoded> {
        let mut now = Vec::new();
        let mut delayed = Vec::new();
        for item in items {
            let json = to_json(item, "work item")?;
            match item.due_ms {
                None => now.push((item.run.to_string(), json)),
                Some(due) => delayed.push((due, self.delayed_member(item, &json))),
            }
        }
        Ok((now, delayed))
    }

    fn finished_score(&self, record: &RunRecord) -> String {
        record
            .finished_ms
            .map(|f| f.saturating_add(self.retention_ms()).to_string())
            .unwrap_or_default()
    }

    fn gc_json(&self, record: &RunRecord, member: &str) -> Result<String> {
        if record.finished_ms.is_none() {
            return Ok(String::new());
        }
        let mut keys = self.static_index_keys(record);
        keys.extend(STATES.iter().map(|s| self.keys.idx_state(*s)));
        to_json(&serde_json::json!({ "m": member, "k": keys }), "gc entry")
    }

    /// Indexes a run is in for life (all but the state index).
    fn static_index_keys(&self, record: &RunRecord) -> Vec<String> {
        let mut keys = vec![
            self.keys.idx_all(),
            self.keys.idx_repo(&record.spec.repo),
            self.keys.idx_commit(&record.spec.commit),
        ];
        if let Some(g) = &record.spec.options.concurrency_group {
            keys.push(self.keys.idx_group(g));
        }
        keys
    }

    async fn stored_version(&self, id: &RunId) -> Result<Option<String>> {
        let mut con = self.con.clone();
        redis::cmd("HGET")
            .arg(self.keys.run(id))
            .arg("v")
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, &format!("run {id}")))
    }

    async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        if let Some(c) = self
            .blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
        {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.config.connect_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| classify(e, "blocking connection"))
    }

    /// Waits up to `block` for an entry after `last_id` (no claim: the
    /// claim script takes it afterwards). Returns early on new entries.
    async fn wait_for_entries(&self, last_id: &str, block: Duration) -> Result<()> {
        let mut con = self.blocking_connection().await?;
        let ms = millis(block).max(1);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(ms)
            .arg("STREAMS")
            .arg(self.keys.stream())
            .arg(last_id);
        let read = cmd.query_async::<Value>(&mut con);
        // The connection has no response timeout (BLOCK would trip it); guard
        // against a server that vanished without closing the socket.
        match tokio::time::timeout(block + self.config.response_timeout, read).await {
            Ok(Ok(_)) => {
                self.blocking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(con);
                Ok(())
            }
            Ok(Err(e)) => Err(classify(e, "waiting for work")),
            Err(_) => Err(Error::unavailable(
                "redis",
                "waiting for work: no reply from redis",
            )),
        }
    }

    /// One run of the claim script.
    async fn claim_once(&self, consumer: &str, max: usize, now_ms: u64) -> Result<ClaimReply> {
        let reclaim_ms = millis(self.config.reclaim_after);
        let autoclaim_every = (self.config.reclaim_after / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(10));
        let autoclaim = if self.due(&self.last_autoclaim_ms, autoclaim_every) {
            // The backstop reads Redis's idle time, which renewals do not
            // reset: it must outlast a long batch that is being renewed.
            backstop_idle_ms(reclaim_ms).to_string()
        } else {
            String::new()
        };
        let trim = if self.due(&self.last_trim_ms, TRIM_EVERY) {
            "1"
        } else {
            ""
        };
        let mut con = self.con.clone();
        let reply: Value = self
            .scripts
            .claim
            .key(self.keys.stream())
            .key(self.keys.timers())
            .arg(&self.config.group)
            .arg(consumer)
            .arg(max)
            .arg(now_ms)
            .arg(now_ms.saturating_add(reclaim_ms))
            .arg(self.config.stream_max_len)
            .arg(autoclaim)
            .arg(trim)
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "claiming work"))?;
        parse_claim_reply(reply)
    }

    /// Acknowledges entries that cannot be decoded (poison messages).
    async fn drop_entries(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let tokens: Vec<ClaimToken> = ids.iter().cloned().map(ClaimToken).collect();
        if let Err(e) = self.ack(&tokens).await {
            warn!(error = %e, "cannot drop undecodable work items; they will come back");
        }
    }
}

/// Walks one listing index newest first, a chunk at a time.
struct IndexWalker {
    key: String,
    /// Exclusive upper bound for the next fetch (`+` at first).
    upper: String,
    buf: std::collections::VecDeque<String>,
    done: bool,
}

impl IndexWalker {
    fn new(key: String, upper: String) -> Self {
        IndexWalker {
            key,
            upper,
            buf: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Fetches the next chunk when the buffer is empty.
    async fn fill(&mut self, con: &mut ConnectionManager) -> Result<()> {
        if !self.buf.is_empty() || self.done {
            return Ok(());
        }
        let members: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
            .arg(&self.key)
            .arg(&self.upper)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(LIST_CHUNK)
            .query_async(con)
            .await
            .map_err(|e| classify(e, "listing runs"))?;
        if members.len() < LIST_CHUNK {
            self.done = true;
        }
        if let Some(last) = members.last() {
            self.upper = format!("({last}");
        }
        self.buf.extend(members);
        Ok(())
    }

    fn head(&self) -> Option<&String> {
        self.buf.front()
    }

    fn pop(&mut self) -> Option<String> {
        self.buf.pop_front()
    }
}

/// Now items `(run, json)` and delayed items `(due ms, timers member)`.
type Encoded = (Vec<(String, String)>, Vec<(u64, String)>);

/// What the claim script answered.
struct ClaimReply {
    entries: Vec<(String, u32, Vec<u8>)>,
    next_timer: Option<u64>,
    last_id: String,
}

fn parse_claim_reply(v: Value) -> Result<ClaimReply> {
    let Value::Array(parts) = v else {
        return Err(unavailable_reply("claim", format!("{v:?}")));
    };
    let mut parts = parts.into_iter();
    let _n = parts.next();
    let next_timer = parts
        .next()
        .and_then(|v| as_string(&v))
        .and_then(|s| s.parse::<f64>().ok())
        .map(|f| f.max(0.0) as u64);
    let last_id = parts.next().and_then(|v| as_string(&v)).unwrap_or_default();
    let mut entries = Vec::new();
    if let Some(Value::Array(flat)) = parts.next() {
        let mut it = flat.into_iter();
        while let (Some(id), Some(deliveries), Some(json)) = (it.next(), it.next(), it.next()) {
            let id = as_string(&id).ok_or_else(|| unavailable_reply("claim", "entry id"))?;
            let deliveries =
                u32::try_from(as_u64(&deliveries).unwrap_or(1).max(1)).unwrap_or(u32::MAX);
            let json = match json {
                Value::BulkString(b) => b,
                Value::SimpleString(s) => s.into_bytes(),
                _ => Vec::new(),
            };
            entries.push((id, deliveries, json));
        }
    }
    Ok(ClaimReply {
        entries,
        next_timer,
        last_id,
    })
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn to_json<T: serde::Serialize>(v: &T, what: &str) -> Result<String> {
    serde_json::to_string(v).map_err(|e| {
        let mut errors = FieldErrors::default();
        errors.push(what, format!("cannot be encoded: {e}"));
        Error::Invalid(errors)
    })
}

fn decode_delivery(id: &str, bytes: &[u8]) -> Result<Delivery> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(
            format!("delivery {id}"),
            format!("stored delivery cannot be read: {e}"),
        )
    })
}

/// Decodes a stored record, telling a foreign layout from a broken one.
fn decode_record(id: &RunId, bytes: &[u8]) -> Result<RunRecord> {
    let what = format!("run {id}");
    let record: RunRecord = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            #[derive(Deserialize)]
            struct FormatOnly {
                format: u32,
            }
            return Err(match serde_json::from_slice::<FormatOnly>(bytes) {
                Ok(f) if f.format != RECORD_FORMAT => Error::corrupt(
                    what,
                    format!(
                        "record format {} is not the supported {RECORD_FORMAT}",
                        f.format
                    ),
                ),
                _ => Error::corrupt(what, format!("stored record cannot be read: {e}")),
            });
        }
    };
    if &record.id != id {
        return Err(Error::corrupt(
            what,
            format!("stored record belongs to run {}", record.id),
        ));
    }
    record.check_format()
}

/// Parses a listing cursor (`<created ms>:<id>`, as [`RunPage::next`] gives)
/// into an index member.
fn cursor_member(cursor: &str) -> Result<String> {
    let bad = || {
        let mut e = FieldErrors::default();
        e.push(
            "after",
            format!("{cursor:?} is not a cursor returned by list"),
        );
        Error::Invalid(e)
    };
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let id = RunId::new(id).map_err(|_| bad())?;
    Ok(Keys::index_member(ms, &id))
}

/// The field suffix of one attempt in its run's logs hash.
fn log_field(key: &LaunchKey) -> String {
    format!("{}:{}", key.attempt, key.task)
}

fn chunks<T>(v: &[T]) -> std::slice::Chunks<'_, T> {
    v.chunks(MAX_CHUNK)
}

#[async_trait]
impl Store for RedisStore {
    async fn create_run(&self, record: RunRecord, start: Vec<WorkItem>) -> Result<Created> {
        let id = record.id.clone();
        let what = format!("run {id}");
        let rec_json = to_json(&record, "record")?;
        let sum_json = to_json(&record.summary(), "summary")?;
        let member = Keys::index_member(record.created_ms, &id);
        let mut index_keys = self.static_index_keys(&record);
        index_keys.push(self.keys.idx_state(record.state));
        let (now, delayed) = self.encode_items(&start)?;

        let mut inv = self.run_invocation(&self.scripts.create, &id);
        for k in &index_keys {
            inv.key(k);
        }
        inv.arg(record.version)
            .arg(&rec_json)
            .arg(&sum_json)
            .arg(record.state.as_str())
            .arg(&member)
            .arg(id.as_str())
            .arg(self.finished_score(&record))
            .arg(self.retention_ms().max(1))
            .arg(self.gc_json(&record, &member)?)
            .arg(self.config.stream_max_len)
            .arg(now.len())
            .arg(delayed.len());
        for (run, json) in &now {
            inv.arg(run).arg(json);
        }
        for (due, m) in &delayed {
            inv.arg(*due).arg(m);
        }
        let mut con = self.con.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        match reply.first().and_then(as_string).as_deref() {
            Some("created") => Ok(Created {
                record,
                created: true,
            }),
            Some("exists") => {
                let bytes = match reply.get(1) {
                    Some(Value::BulkString(b)) => b.as_slice(),
                    _ => return Err(Error::corrupt(what, "stored record is not a string")),
                };
                Ok(Created {
                    record: decode_record(&id, bytes)?,
                    created: false,
                })
            }
            other => Err(unavailable_reply(&what, format!("{other:?}"))),
        }
    }

    async fn load_run(&self, id: &RunId) -> Result<RunRecord> {
        let what = format!("run {id}");
        let mut con = self.con.clone();
        let bytes: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.keys.run(id))
            .arg("rec")
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        match bytes {
            None => Err(Error::not_found(what)),
            Some(b) => decode_record(id, &b),
        }
    }

    /// `HGET v`: the version without reading the record.
    async fn run_version(&self, id: &RunId) -> Result<u64> {
        let what = format!("run {id}");
        let mut con = self.con.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.keys.run(id))
            .arg("v")
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        match v {
            None => Err(Error::not_found(what)),
            Some(v) => v
                .parse()
                .map_err(|_| Error::corrupt(what, format!("version {v:?} is not a number"))),
        }
    }

    async fn commit(&self, commit: Commit) -> Result<()> {
        let Commit {
            record,
            expected_version,
            enqueue,
            ack,
        } = commit;
        let id = record.id.clone();
        let what = format!("run {id}");
        if record.version != expected_version.wrapping_add(1) {
            // A malformed commit: report what is stored, like any conflict.
            return match self.stored_version(&id).await? {
                None => Err(Error::not_found(what)),
                Some(v) => Err(Error::version_conflict(
                    what,
                    expected_version,
                    v.parse().unwrap_or(0),
                )),
            };
        }
        let rec_json = to_json(&record, "record")?;
        let sum_json = to_json(&record.summary(), "summary")?;
        let member = Keys::index_member(record.created_ms, &id);
        let (now, delayed) = self.encode_items(&enqueue)?;

        let mut inv = self.run_invocation(&self.scripts.commit, &id);
        for s in STATES {
            inv.key(self.keys.idx_state(s));
        }
        inv.key(self.keys.run_logs(&id));
        inv.arg(expected_version)
            .arg(record.version)
            .arg(&rec_json)
            .arg(&sum_json)
            .arg(record.state.as_str())
            .arg(&member)
            .arg(id.as_str())
            .arg(self.finished_score(&record))
            .arg(self.retention_ms().max(1))
            .arg(self.gc_json(&record, &member)?)
            .arg(&self.config.group)
            .arg(self.config.stream_max_len)
            .arg(now.len())
            .arg(delayed.len())
            .arg(ack.len());
        for (run, json) in &now {
            inv.arg(run).arg(json);
        }
        for (due, m) in &delayed {
            inv.arg(*due).arg(m);
        }
        for t in &ack {
            inv.arg(&t.0);
        }
        let mut con = self.con.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        match reply.first().and_then(as_string).as_deref() {
            Some("ok") => Ok(()),
            Some("notfound") => Err(Error::not_found(what)),
            Some("conflict") => {
                let found = reply.get(1).and_then(as_string).unwrap_or_default();
                match found.parse::<u64>() {
                    Ok(found) => Err(Error::version_conflict(what, expected_version, found)),
                    Err(_) => Err(Error::corrupt(
                        what,
                        format!("stored version {found:?} is not a number"),
                    )),
                }
            }
            other => Err(unavailable_reply(&what, format!("{other:?}"))),
        }
    }

    async fn enqueue(&self, items: Vec<WorkItem>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let (now, delayed) = self.encode_items(&items)?;
        let stream = self.keys.stream();
        let mut pipe = redis::pipe();
        for (run, json) in &now {
            let cmd = pipe.cmd("XADD").arg(&stream);
            if self.config.stream_max_len > 0 {
                cmd.arg("MAXLEN").arg("~").arg(self.config.stream_max_len);
            }
            cmd.arg("*").arg("r").arg(run).arg("w").arg(json).ignore();
        }
        for chunk in chunks(&delayed) {
            let cmd = pipe.cmd("ZADD").arg(self.keys.timers());
            for (due, m) in chunk {
                cmd.arg(*due).arg(m);
            }
            cmd.ignore();
        }
        for ((_, m), item) in delayed
            .iter()
            .zip(items.iter().filter(|i| i.due_ms.is_some()))
        {
            pipe.cmd("SADD")
                .arg(self.keys.run_delayed(&item.run))
                .arg(m)
                .ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(|e| classify(e, "enqueueing work"))
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        now_ms: u64,
        wait: Duration,
    ) -> Result<Vec<Claimed>> {
        let max = max.clamp(1, MAX_CHUNK);
        let started = Instant::now();
        loop {
            let elapsed = started.elapsed();
            let now = now_ms.saturating_add(millis(elapsed));
            let reply = self.claim_once(consumer, max, now).await?;
            if !reply.entries.is_empty() {
                let mut out = Vec::with_capacity(reply.entries.len());
                let mut poison = Vec::new();
                for (id, deliveries, json) in reply.entries {
                    match serde_json::from_slice::<WorkItem>(&json) {
                        Ok(item) => out.push(Claimed {
                            token: ClaimToken(id),
                            item,
                            deliveries,
                        }),
                        Err(e) => {
                            warn!(entry = %id, error = %e, "dropping a work item that cannot be read");
                            poison.push(id);
                        }
                    }
                }
                self.drop_entries(&poison).await;
                if !out.is_empty() || started.elapsed() >= wait {
                    return Ok(out);
                }
                continue;
            }
            let elapsed = started.elapsed();
            if elapsed >= wait {
                return Ok(Vec::new());
            }
            let mut block = wait - elapsed;
            if let Some(next) = reply.next_timer {
                block = block.min(Duration::from_millis(next.saturating_sub(now).max(1)));
            }
            let autoclaim_every = (self.config.reclaim_after / 2)
                .clamp(Duration::from_millis(50), Duration::from_secs(10));
            block = block.min(autoclaim_every);
            debug!(consumer, ?block, "waiting for work");
            self.wait_for_entries(&reply.last_id, block).await?;
        }
    }

    async fn renew_claims(&self, tokens: &[ClaimToken], now_ms: u64) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let deadline = now_ms.saturating_add(millis(self.config.reclaim_after));
        let mut pipe = redis::pipe();
        for chunk in chunks(tokens) {
            // XX: only deadlines still there (not acknowledged, not taken
            // over and re-dated by another consumer's claim... which would
            // hold a deadline of its own under the same member: GT keeps
            // the later one).
            let zadd = pipe.cmd("ZADD").arg(self.keys.timers()).arg("XX").arg("GT");
            for t in chunk {
                zadd.arg(deadline).arg(format!("c{}", t.0));
            }
            zadd.ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(|e| classify(e, "renewing claims"))
    }

    async fn ack(&self, tokens: &[ClaimToken]) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chunk in chunks(tokens) {
            let xack = pipe
                .cmd("XACK")
                .arg(self.keys.stream())
                .arg(&self.config.group);
            for t in chunk {
                xack.arg(&t.0);
            }
            xack.ignore();
            let zrem = pipe.cmd("ZREM").arg(self.keys.timers());
            for t in chunk {
                zrem.arg(format!("c{}", t.0));
            }
            zrem.ignore();
        }
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con)
            .await
            .map_err(|e| classify(e, "acknowledging work"))
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage> {
        let limit = if filter.limit == 0 {
            self.config.page_size
        } else {
            filter.limit
        }
        .min(MAX_PAGE);
        // The most selective index; for states alone, a merge of their indexes.
        let indexes: Vec<String> = if let Some(c) = &filter.commit {
            vec![self.keys.idx_commit(c)]
        } else if let Some(g) = &filter.concurrency_group {
            vec![self.keys.idx_group(g)]
        } else if let Some(r) = &filter.repo {
            vec![self.keys.idx_repo(r)]
        } else if !filter.states.is_empty() {
            let mut states = filter.states.clone();
            states.sort_by_key(|s| s.as_str());
            states.dedup();
            states.into_iter().map(|s| self.keys.idx_state(s)).collect()
        } else {
            vec![self.keys.idx_all()]
        };
        let upper = match &filter.after {
            Some(c) => format!("({}", cursor_member(c)?),
            None => "+".to_string(),
        };
        let mut con = self.con.clone();
        let mut walkers: Vec<IndexWalker> = indexes
            .into_iter()
            .map(|key| IndexWalker::new(key, upper.clone()))
            .collect();
        let mut runs: Vec<RunSummary> = Vec::new();
        let mut more = false;
        'scan: loop {
            // Up to one chunk of members, newest first across the indexes.
            let mut members: Vec<String> = Vec::with_capacity(LIST_CHUNK);
            while members.len() < LIST_CHUNK {
                for w in walkers.iter_mut() {
                    w.fill(&mut con).await?;
                }
                let best = walkers
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| w.head().map(|h| (i, h)))
                    .max_by(|a, b| a.1.cmp(b.1))
                    .map(|(i, _)| i);
                let Some(i) = best else { break };
                if let Some(m) = walkers[i].pop()
                    && members.last() != Some(&m)
                {
                    members.push(m);
                }
            }
            if members.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            let mut ids = Vec::with_capacity(members.len());
            for m in &members {
                let id = m.split_once(':').map(|(_, id)| id).unwrap_or_default();
                let id = match RunId::new(id) {
                    Ok(id) => id,
                    Err(_) => {
                        warn!(member = %m, "skipping a malformed index entry");
                        continue;
                    }
                };
                pipe.cmd("HGET").arg(self.keys.run(&id)).arg("sum");
                ids.push(id);
            }
            let sums: Vec<redis::RedisResult<Option<Vec<u8>>>> = if ids.is_empty() {
                Vec::new()
            } else {
                pipe.ignore_errors()
                    .query_async(&mut con)
                    .await
                    .map_err(|e| classify(e, "listing runs"))?
            };
            for (id, sum) in ids.iter().zip(sums) {
                let sum = match sum {
                    Ok(Some(sum)) => sum,
                    Ok(None) => continue, // expired, not yet purged from the index
                    Err(e) => {
                        let e = classify(e, &format!("run {id}"));
                        if e.kind() != stagetime_core::ErrorKind::Corrupt {
                            return Err(e);
                        }
                        warn!(run = %id, error = %e, "skipping a run that cannot be read");
                        continue;
                    }
                };
                let summary: RunSummary = match serde_json::from_slice(&sum) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(run = %id, error = %e, "skipping a run whose summary cannot be read");
                        continue;
                    }
                };
                if !filter.matches(&summary) {
                    continue;
                }
                if runs.len() == limit {
                    more = true;
                    break 'scan;
                }
                runs.push(summary);
            }
        }
        let next = if more {
            runs.last().map(|s| format!("{}:{}", s.created_ms, s.id))
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn record_delivery(&self, delivery: Delivery, ttl: Duration) -> Result<bool> {
        let delivery = Delivery {
            state: stagetime_core::store::DeliveryState::Pending,
            ..delivery
        };
        let json = to_json(&delivery, "delivery")?;
        let mut con = self.con.clone();
        let added: u64 = self
            .scripts
            .record_delivery
            .key(self.keys.delivery(&delivery.id))
            .key(self.keys.deliveries_pending())
            .key(self.keys.deliveries())
            .arg(&delivery.id)
            .arg(json)
            .arg(millis(ttl).max(1))
            .arg(delivery.received_ms)
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "recording a delivery"))?;
        Ok(added == 1)
    }

    async fn pending_deliveries(&self, max: usize) -> Result<Vec<Delivery>> {
        let mut con = self.con.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.keys.deliveries_pending())
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "reading pending deliveries"))?;
        let mut out = all
            .into_iter()
            .map(|(id, json)| decode_delivery(&id, json.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        out.truncate(max);
        Ok(out)
    }

    async fn settle_delivery(&self, delivery: Delivery) -> Result<()> {
        let json = to_json(&delivery, "delivery")?;
        let mut con = self.con.clone();
        let _: u64 = self
            .scripts
            .settle_delivery
            .key(self.keys.delivery(&delivery.id))
            .key(self.keys.deliveries_pending())
            .arg(&delivery.id)
            .arg(json)
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "settling a delivery"))?;
        Ok(())
    }

    async fn list_deliveries(&self, max: usize) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.keys.deliveries())
            .arg(0)
            .arg(max - 1)
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "listing deliveries"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for id in &ids {
            get.arg(self.keys.delivery(id));
        }
        let values: Vec<Option<String>> = get
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "listing deliveries"))?;
        ids.iter()
            .zip(values)
            .filter_map(|(id, v)| v.map(|json| decode_delivery(id, json.as_bytes())))
            .collect()
    }

    async fn append_log(
        &self,
        key: &LaunchKey,
        at: u64,
        text: &[u8],
        end: bool,
        keep: usize,
    ) -> Result<()> {
        let what = format!("log of {key}");
        let mut con = self.con.clone();
        let reply: String = self
            .scripts
            .append_log
            .key(self.keys.run(&key.run))
            .key(self.keys.run_logs(&key.run))
            .arg(log_field(key))
            .arg(at)
            .arg(text)
            .arg(if end { "1" } else { "0" })
            .arg(keep)
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        match reply.as_str() {
            "ok" => Ok(()),
            "notfound" => Err(Error::not_found(format!("run {}", key.run))),
            other => Err(unavailable_reply(&what, format!("{other:?}"))),
        }
    }

    async fn read_log(&self, key: &LaunchKey, from: u64) -> Result<Option<StoredLog>> {
        let what = format!("log of {key}");
        let mut con = self.con.clone();
        let reply: Value = self
            .scripts
            .read_log
            .key(self.keys.run_logs(&key.run))
            .arg(log_field(key))
            .arg(from)
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &what))?;
        let items = match reply {
            Value::Nil => return Ok(None),
            Value::Array(items) if items.len() == 4 => items,
            other => return Err(unavailable_reply(&what, format!("{other:?}"))),
        };
        let number = |v: &Value| {
            as_u64(v).ok_or_else(|| Error::corrupt(what.clone(), format!("offset {v:?}")))
        };
        Ok(Some(StoredLog {
            start: number(&items[0])?,
            end: number(&items[1])?,
            ended: as_string(&items[2]).as_deref() == Some("1"),
            bytes: match &items[3] {
                Value::BulkString(b) => b.clone(),
                _ => Vec::new(),
            },
        }))
    }

    async fn track_report(&self, subject: &str, record: String, ttl: Duration) -> Result<bool> {
        let mut con = self.con.clone();
        let added: u64 = self
            .scripts
            .track_report
            .key(self.keys.report(subject))
            .key(self.keys.reports_open())
            .arg(subject)
            .arg(record)
            .arg((ttl.as_millis() as u64).max(1))
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "tracking a forge report"))?;
        Ok(added == 1)
    }

    async fn save_report(&self, subject: &str, record: String, open: bool) -> Result<bool> {
        let mut con = self.con.clone();
        let known: u64 = self
            .scripts
            .save_report
            .key(self.keys.report(subject))
            .key(self.keys.reports_open())
            .arg(subject)
            .arg(record)
            .arg(if open { "1" } else { "0" })
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "saving a forge report"))?;
        Ok(known == 1)
    }

    async fn open_reports(&self, max: usize) -> Result<Vec<(String, String)>> {
        let mut con = self.con.clone();
        let mut subjects: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.reports_open())
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "reading open forge reports"))?;
        subjects.sort();
        subjects.truncate(max);
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for s in &subjects {
            get.arg(self.keys.report(s));
        }
        let values: Vec<Option<String>> = get
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "reading open forge reports"))?;
        let mut out = Vec::with_capacity(subjects.len());
        let mut expired = Vec::new();
        for (s, v) in subjects.into_iter().zip(values) {
            match v {
                Some(record) => out.push((s, record)),
                None => expired.push(s),
            }
        }
        if !expired.is_empty() {
            // Their records expired: nothing is left to report.
            let _: redis::RedisResult<u64> = redis::cmd("SREM")
                .arg(self.keys.reports_open())
                .arg(&expired)
                .query_async(&mut con)
                .await;
        }
        Ok(out)
    }

    async fn load_report(&self, subject: &str) -> Result<Option<String>> {
        let mut con = self.con.clone();
        redis::cmd("GET")
            .arg(self.keys.report(subject))
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "reading a forge report"))
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<u64> {
        let mut total = 0u64;
        let mut con = self.con.clone();
        loop {
            let n: u64 = self
                .scripts
                .purge
                .key(self.keys.finished())
                .key(self.keys.gc())
                .key(self.keys.timers())
                .arg(now_ms)
                .arg(PURGE_BATCH)
                .arg(self.keys.run_prefix())
                .invoke_async(&mut con)
                .await
                .map_err(|e| classify(e, "purging expired runs"))?;
            total += n;
            if usize::try_from(n).unwrap_or(usize::MAX) < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Figures from the consumer group (`XINFO GROUPS` lag, `XPENDING`
    /// summary), the timers zset and the state indexes — a few O(1)/O(log n)
    /// commands, no scan. `delayed` is the timers zset less the in-flight
    /// entries (each has a claim deadline there), so it is approximate while
    /// claims are taken over. The oldest age is that of the oldest entry
    /// not yet delivered or not yet acknowledged (stream ids carry Redis's
    /// clock).
    async fn epoch(&self) -> Result<Option<String>> {
        let mut con = self.con.clone();
        let fresh = format!(
            "{:016x}{:016x}",
            RandomState::new().build_hasher().finish(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                // The low 64 bits: a tie-breaker of the random part, not a time.
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        );
        // SET NX .. GET answers the value kept when there is one (Redis >= 7);
        // a plain SET NX + GET works on 6.2 too.
        let (_, epoch): (Value, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(self.keys.epoch())
            .arg(&fresh)
            .arg("NX")
            .cmd("GET")
            .arg(self.keys.epoch())
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "epoch"))?;
        Ok(epoch)
    }

    async fn stats(&self, now_ms: u64) -> Result<Option<StoreStats>> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XPENDING")
            .arg(self.keys.stream())
            .arg(&self.config.group)
            .cmd("ZCARD")
            .arg(self.keys.timers());
        for state in STATES {
            pipe.cmd("ZCARD").arg(self.keys.idx_state(state));
        }
        let replies: Vec<Value> = match pipe.query_async(&mut con).await {
            Ok(v) => v,
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Some(StoreStats {
                    queue: QueueStats::default(),
                    runs_by_state: STATES.iter().map(|s| (*s, 0)).collect(),
                }));
            }
            Err(e) => return Err(classify(e, "store stats")),
        };
        let (pending, oldest_pending) = match replies.first() {
            Some(Value::Array(v)) => (
                v.first().and_then(as_u64).unwrap_or(0),
                v.get(1).and_then(stream_id_ms),
            ),
            _ => (0, None),
        };
        let timers = replies.get(1).and_then(as_u64).unwrap_or(0);
        let runs_by_state = STATES
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, replies.get(2 + i).and_then(as_u64).unwrap_or(0)))
            .collect();
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.keys.stream())
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, "store stats"))?;
        let group = match &groups {
            Value::Array(gs) => gs.iter().find(|g| {
                field(g, "name").and_then(as_string).as_deref() == Some(&self.config.group)
            }),
            _ => None,
        };
        let lag = group
            .and_then(|g| field(g, "lag"))
            .and_then(as_u64)
            .unwrap_or(0);
        let last_delivered = group
            .and_then(|g| field(g, "last-delivered-id"))
            .and_then(as_string);
        let mut oldest = oldest_pending;
        if lag > 0 {
            let start = match &last_delivered {
                Some(id) if id != "0-0" => format!("({id}"),
                _ => "-".to_string(),
            };
            let first: Value = redis::cmd("XRANGE")
                .arg(self.keys.stream())
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con)
                .await
                .map_err(|e| classify(e, "store stats"))?;
            let first_ms = match &first {
                Value::Array(v) => v.first().and_then(|e| match e {
                    Value::Array(e) => e.first().and_then(stream_id_ms),
                    _ => None,
                }),
                _ => None,
            };
            oldest = match (oldest, first_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(Some(StoreStats {
            queue: QueueStats {
                ready: lag,
                in_flight: pending,
                delayed: timers.saturating_sub(pending),
                oldest_age_ms: oldest.map(|ms| now_ms.saturating_sub(ms)),
            },
            runs_by_state,
        }))
    }
}

/// A field of a reply that is a flat key/value array (RESP2) or a map (RESP3).
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|c| as_string(&c[0]).as_deref() == Some(name))
            .and_then(|c| c.get(1)),
        Value::Map(kv) => kv
            .iter()
            .find(|(k, _)| as_string(k).as_deref() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The milliseconds part of a stream entry id (`<ms>-<seq>`).
fn stream_id_ms(v: &Value) -> Option<u64> {
    as_string(v)?.split_once('-')?.0.parse().ok()
}

/// Idle time after which the XAUTOCLAIM backstop takes entries over: six
/// reclaim times (30 s by default; claims with a deadline move on sooner).
fn backstop_idle_ms(reclaim_ms: u64) -> u64 {
    reclaim_ms.saturating_mul(6).max(1)
}

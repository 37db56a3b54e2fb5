//! The key layout (see `docs/redis.md`).

use stagetime_core::store::{RunId, RunState};

/// Every state, in the order the commit script expects its index keys.
pub(crate) const STATES: [RunState; 5] = [
    RunState::Queued,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
];

/// Names of the keys a store uses under its prefix.
///
/// Per-run keys carry the run id as a hash tag (`{id}`), so that a Redis
/// Cluster keeps one run's keys in one slot. The global keys are the work
/// stream, the timers zset, the finished zset, the gc hash and the listing
/// indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix` (used as is; [`crate::RedisConfig`] makes it end with `:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of one run: `v` version, `rec` record JSON, `sum` summary JSON,
    /// `s` state, `f` finished score (empty while not finished).
    pub fn run(&self, id: &RunId) -> String {
        format!("{}run:{{{}}}", self.prefix, id)
    }

    /// The start of [`Keys::run`] before the id (for the purge script).
    pub(crate) fn run_prefix(&self) -> String {
        format!("{}run:{{", self.prefix)
    }

    /// Set of one run's members in the timers zset (its delayed work), so a
    /// purge can drop them.
    pub fn run_delayed(&self, id: &RunId) -> String {
        format!("{}run:{{{}}}:delayed", self.prefix, id)
    }

    /// Hash of one run's attempt logs (`t:<attempt>:<task>` the kept tail,
    /// `n:<attempt>:<task>` bytes written in all, `e:<attempt>:<task>` set
    /// once the log is complete); expires and is purged with the run.
    pub fn run_logs(&self, id: &RunId) -> String {
        format!("{}run:{{{}}}:logs", self.prefix, id)
    }

    /// The data set's epoch (see `Store::epoch`): set once, never expires.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The work stream (consumer group: [`crate::RedisConfig::group`]).
    pub fn stream(&self) -> String {
        format!("{}queue", self.prefix)
    }

    /// Zset of timers by due time (ms): `d<nonce>|<run>|<json>` delayed
    /// items, `c<entry id>` claim deadlines.
    pub fn timers(&self) -> String {
        format!("{}timers", self.prefix)
    }

    /// Zset of finished runs by the end of their retention (ms).
    pub fn finished(&self) -> String {
        format!("{}finished", self.prefix)
    }

    /// Hash run id → the index keys and member to clean when it is purged.
    pub fn gc(&self) -> String {
        format!("{}gc", self.prefix)
    }

    /// One webhook delivery's record (JSON), expiring with the delivery ttl.
    pub fn delivery(&self, id: &str) -> String {
        format!("{}delivery:{}", self.prefix, id)
    }

    /// Hash delivery id → record JSON of the deliveries not yet settled.
    pub fn deliveries_pending(&self) -> String {
        format!("{}deliveries:pending", self.prefix)
    }

    /// Zset of remembered delivery ids by the end of their ttl (ms), for listing.
    pub fn deliveries(&self) -> String {
        format!("{}deliveries", self.prefix)
    }

    /// One forge report record (opaque text), expiring with its ttl.
    pub fn report(&self, subject: &str) -> String {
        format!("{}report:{}", self.prefix, subject)
    }

    /// Set of the report subjects with something left to report.
    pub fn reports_open(&self) -> String {
        format!("{}reports:open", self.prefix)
    }

    /// Index of every run (lex-ordered members `<created ms, 16 digits>:<id>`).
    pub fn idx_all(&self) -> String {
        format!("{}idx:all", self.prefix)
    }

    /// Index of one repository's runs.
    pub fn idx_repo(&self, repo: &str) -> String {
        format!("{}idx:repo:{}", self.prefix, repo)
    }

    /// Index of one commit's runs.
    pub fn idx_commit(&self, commit: &str) -> String {
        format!("{}idx:commit:{}", self.prefix, commit)
    }

    /// Index of one concurrency group's runs.
    pub fn idx_group(&self, group: &str) -> String {
        format!("{}idx:group:{}", self.prefix, group)
    }

    /// Index of the runs in one state.
    pub fn idx_state(&self, state: RunState) -> String {
        format!("{}idx:state:{}", self.prefix, state.as_str())
    }

    /// The member of a run in every index: `<created ms, 16 digits>:<id>`, so
    /// that lexicographic order is (created, id) order.
    pub fn index_member(created_ms: u64, id: &RunId) -> String {
        format!("{created_ms:016}:{id}")
    }
}

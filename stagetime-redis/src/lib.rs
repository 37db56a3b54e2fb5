//! Redis store for stagetime: the shared state of revision runs and the work
//! queue that lets any number of workers drive them, and survive the death of
//! any of them.
//!
//! [`RedisStore`] implements [`stagetime_core::store::Store`] on plain Redis
//! ≥ 6.2 or Valkey (no modules):
//!
//! - a run is one hash `<prefix>run:{<id>}` (`v` version, `rec` record JSON,
//!   `sum` listing summary, `s` state, `f` finished score); the hash tag
//!   `{<id>}` keeps a run's keys in one Cluster slot;
//! - every transition is one Lua script (kept as `.lua` files, loaded once and
//!   called by SHA, reloaded on `NOSCRIPT`): compare-and-set on the version,
//!   the new record, index moves, the work it causes (stream entries, delayed
//!   timers) and the acknowledgement of the work it consumed;
//! - work is distributed with a Redis Stream and one consumer group; a claim
//!   is one script that promotes due delayed items, takes over claims whose
//!   deadline passed (and, as a backstop, entries idle for the reclaim time
//!   with `XAUTOCLAIM`), reads new entries and trims the stream;
//! - waiting for work uses a blocking `XREAD` on a connection of its own with
//!   no response timeout;
//! - finished runs expire after the retention period; listing reads sorted-set
//!   indexes, never the keyspace;
//! - errors are classified where they are born ([`classify`]): unreachable or
//!   busy Redis → `Unavailable`, stale version → `Conflict`, unreadable or
//!   foreign records → `Corrupt` for that run only;
//! - `redis://` and `rediss://` (TLS, optionally with a private CA:
//!   [`RedisConfig::tls_root_cert`]), password and database from the URL.
//!
//! See `docs/redis.md` for the key layout and operations.
//!
//! ```no_run
//! # async fn demo() -> stagetime_core::Result<()> {
//! use std::sync::Arc;
//! use stagetime_core::store::Store;
//! use stagetime_redis::{RedisConfig, RedisStore};
//!
//! let config = RedisConfig::new("redis://127.0.0.1:6379/0").with_prefix("ci:");
//! let store: Arc<dyn Store> = Arc::new(RedisStore::connect(config).await?);
//! # let _ = store;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod keys;
mod scripts;
mod store;

pub use config::RedisConfig;
pub use error::classify;
pub use keys::Keys;
pub use store::{RedisStore, StreamStats};

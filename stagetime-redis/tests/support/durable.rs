//! A backend whose attempts succeed at once and whose launches are recorded
//! in Redis, so they survive the death of the worker process that made them:
//! a stand-in for an idempotent external system (a cluster) in crash tests.
//!
//! `launch` is idempotent on the launch key (`SET NX`); every call is counted
//! (`calls`), every creation too (`created`). Like a watcher, it reports the
//! end of an attempt whether it created it or found it; `reconcile` reports
//! every attempt of a run that exists.
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use redis::aio::ConnectionManager;
use stagetime_core::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation,
};
use stagetime_core::scheduler::AttemptOutcome;
use stagetime_core::store::RunId;
use stagetime_core::{Error, Result};
use tokio::sync::mpsc;

const LAUNCH: &str = r#"
local calls = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 1 then
  redis.call('SADD', KEYS[3], ARGV[2])
  return {1, calls}
end
return {0, calls}
"#;

/// See the module documentation.
pub struct DurableBackend {
    con: ConnectionManager,
    prefix: String,
    delay: Duration,
    script: redis::Script,
    observers: Mutex<Vec<mpsc::UnboundedSender<Observation>>>,
}

impl DurableBackend {
    /// Records under `prefix` (use the store's prefix); each launch takes `delay`.
    pub async fn new(url: &str, prefix: &str, delay: Duration) -> DurableBackend {
        let client = redis::Client::open(url).expect("client");
        let con = ConnectionManager::new(client).await.expect("connect");
        DurableBackend {
            con,
            prefix: prefix.to_string(),
            delay,
            script: redis::Script::new(LAUNCH),
            observers: Mutex::new(Vec::new()),
        }
    }

    fn created_key(&self) -> String {
        format!("{}test:created", self.prefix)
    }

    fn calls_key(&self) -> String {
        format!("{}test:calls", self.prefix)
    }

    fn run_key(&self, run: &RunId) -> String {
        format!("{}test:launched:{run}", self.prefix)
    }

    /// Launch keys created, as `run/task#attempt`.
    pub async fn created(&self) -> Vec<String> {
        let mut con = self.con.clone();
        redis::cmd("HKEYS")
            .arg(self.created_key())
            .query_async(&mut con)
            .await
            .expect("HKEYS")
    }

    /// Launch calls per key (repeats included).
    pub async fn calls(&self) -> std::collections::HashMap<String, u64> {
        let mut con = self.con.clone();
        redis::cmd("HGETALL")
            .arg(self.calls_key())
            .query_async(&mut con)
            .await
            .expect("HGETALL")
    }

    fn publish(&self, o: Observation) {
        self.observers
            .lock()
            .unwrap()
            .retain(|tx| tx.send(o.clone()).is_ok());
    }
}

fn parse_member(run: &RunId, member: &str) -> Option<LaunchKey> {
    let (task, attempt) = member.rsplit_once('#')?;
    Some(LaunchKey {
        run: run.clone(),
        task: task.to_string(),
        attempt: attempt.parse().ok()?,
    })
}

#[async_trait]
impl Backend for DurableBackend {
    fn name(&self) -> &str {
        "durable-instant"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            commands: true,
            pipelines: true,
            custom: false,
        }
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let key = request.key.clone();
        let mut con = self.con.clone();
        let (created, _calls): (i64, i64) = self
            .script
            .key(self.created_key())
            .key(self.calls_key())
            .key(self.run_key(&key.run))
            .arg(key.to_string())
            .arg(format!("{}#{}", key.task, key.attempt))
            .invoke_async(&mut con)
            .await
            .map_err(|e| Error::unavailable("test backend", e))?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.publish(Observation {
            key: key.clone(),
            outcome: AttemptOutcome::Succeeded,
        });
        Ok(Launched {
            handle: key.to_string(),
            created: created == 1,
        })
    }

    async fn cancel(&self, _key: &LaunchKey) -> Result<()> {
        Ok(())
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.observers.lock().unwrap().push(tx);
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|o| (o, rx))
        }))
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let mut con = self.con.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.run_key(run))
            .query_async(&mut con)
            .await
            .map_err(|e| Error::unavailable("test backend", e))?;
        Ok(members
            .iter()
            .filter_map(|m| parse_member(run, m))
            .map(|key| Observation {
                key,
                outcome: AttemptOutcome::Succeeded,
            })
            .collect())
    }

    async fn housekeeping(&self, _policy: &Housekeeping) -> Result<HousekeepingReport> {
        Ok(HousekeepingReport::default())
    }
}

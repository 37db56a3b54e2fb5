//! Load generator for workload W1: R revision runs × 4 stages × 5 tasks, the
//! instant backend, ONE engine (worker), Redis on loopback.
//!
//! Prints wall time, tasks/s and Redis commands per task, counted with
//! `INFO commandstats` before and after (commands run inside Lua scripts
//! included; the load generator's own INFO calls excluded).
//!
//! ```text
//! cargo run --release -p stagetime-redis --example loadgen -- --runs 200
//! cargo run --release -p stagetime-redis --example loadgen -- --runs 1000 --url redis://127.0.0.1:6379/0
//! ```
//! Without `--url` (or `REDIS_URL`) it starts its own `redis-server` (from
//! `REDIS_SERVER` or the PATH) on a free loopback port, without persistence,
//! and stops it at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stagetime_core::backend::Backend;
use stagetime_core::engine::{Engine, EngineConfig};
use stagetime_core::store::{RunFilter, RunState, Store};
use stagetime_core::testkit::{GatedStore, InstantBackend};
use stagetime_core::{Error, Result};
use stagetime_redis::{RedisConfig, RedisStore};
use tokio::sync::broadcast::error::RecvError;

#[path = "support/w1.rs"]
mod w1;
use w1::{OwnRedis, STAGES, TASKS_PER_STAGE};

struct Args {
    runs: usize,
    url: Option<String>,
    batch: usize,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = Args {
        runs: 200,
        url: std::env::var("REDIS_URL").ok(),
        batch: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => {
                args.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?
            }
            "--url" => args.url = Some(value("--url")?),
            "--batch" => {
                args.batch = value("--batch")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            "-h" | "--help" => {
                return Err("usage: loadgen [--runs R] [--url redis://...] [--batch N]".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// `INFO commandstats` as (command, calls).
async fn command_calls(
    con: &mut redis::aio::MultiplexedConnection,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .map_err(|e| stagetime_redis::classify(e, "INFO commandstats"))?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect())
}

/// Redis's CPU seconds (user + sys) from `INFO cpu`.
async fn redis_cpu(con: &mut redis::aio::MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(con)
        .await
        .map_err(|e| stagetime_redis::classify(e, "INFO cpu"))?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum())
}

/// This process's CPU seconds (user + sys) from /proc (0 where there is none).
fn own_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(args: Args) -> Result<()> {
    let (_server, url) = match args.url.clone() {
        Some(url) => (None, url),
        None => {
            let s = OwnRedis::start().map_err(|e| Error::unavailable("redis", e))?;
            let url = s.url().to_string();
            (Some(s), url)
        }
    };
    let tag = format!("{:x}", std::process::id());
    let config = RedisConfig::new(&url).with_prefix(format!("loadgen-{tag}"));
    let store = Arc::new(RedisStore::connect(config).await?);
    let backend = Arc::new(InstantBackend::new());
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    // Claims are held back until the gate opens, so the worker can be
    // started before the runs are submitted, and timed after.
    let gated = Arc::new(GatedStore {
        gate: gate_rx,
        inner: Arc::clone(&store),
    });
    let engine = Arc::new(
        Engine::new(
            gated as Arc<dyn Store>,
            Arc::clone(&backend) as Arc<dyn Backend>,
        )
        .with_config(EngineConfig {
            consumer: format!("loadgen-{tag}"),
            batch: args.batch,
            claim_wait: Duration::from_millis(100),
            purge_every: None,
            housekeeping: None,
            reconcile_on_start: false,
            ..EngineConfig::default()
        }),
    );
    let mut info_con = redis::Client::open(url.as_str())
        .map_err(|e| stagetime_redis::classify(e, "redis url"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| stagetime_redis::classify(e, "INFO connection"))?;

    let tasks = args.runs * w1::TASKS_PER_RUN;
    println!(
        "W1: {} runs x {STAGES} stages x {TASKS_PER_STAGE} tasks = {tasks} tasks, instant backend, one worker (batch {}), {url}",
        args.runs, args.batch
    );
    let mut updates = engine.subscribe();
    // The worker starts first (it subscribes to the backend's observations in
    // a task of its own) but claims nothing until the gate opens.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(Arc::clone(&engine).run(async move {
        let _ = stopped.changed().await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = command_calls(&mut info_con).await?;
    let redis_cpu_before = redis_cpu(&mut info_con).await?;
    let own_cpu_before = own_cpu();
    // Phase 1: submit every run (create_run: record + start item, one script each).
    let started = Instant::now();
    for i in 0..args.runs {
        engine.submit(w1::spec(i, &tag)).await?;
    }
    let submitted = started.elapsed();
    // Phase 2: the worker drives them all.
    let driving = Instant::now();
    let _ = gate.send(true);
    let mut finished = std::collections::HashMap::new();
    while finished.len() < args.runs {
        match tokio::time::timeout(Duration::from_secs(120), updates.recv()).await {
            Ok(Ok(r)) if r.state.is_finished() => {
                finished.insert(r.id.clone(), r.state);
            }
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                // Missed updates: count from the store (a few commands, counted too).
                let page = store
                    .list_runs(&RunFilter {
                        repo: Some("w1".into()),
                        states: vec![RunState::Succeeded, RunState::Failed, RunState::Cancelled],
                        limit: 1000,
                        ..RunFilter::default()
                    })
                    .await?;
                finished.extend(page.runs.into_iter().map(|s| (s.id, s.state)));
            }
            Ok(Err(RecvError::Closed)) | Err(_) => {
                return Err(Error::unavailable("loadgen", "no progress for 120 s"));
            }
        }
    }
    let wall = driving.elapsed();
    let total = started.elapsed();
    let own_cpu_used = own_cpu() - own_cpu_before;
    let after = command_calls(&mut info_con).await?;
    let redis_cpu_used = redis_cpu(&mut info_con).await? - redis_cpu_before;
    let _ = stop.send(true);
    let _ = worker.await;

    // Our own INFO calls (commandstats before, cpu before) are counted in `after`: leave them out.
    let mut delta: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - before.get(k).copied().unwrap_or(0) - 2 * u64::from(k == "info"),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    delta.sort_by_key(|d| std::cmp::Reverse(d.1));
    let commands: u64 = delta.iter().map(|(_, n)| n).sum();
    let failed = finished
        .values()
        .filter(|s| **s != RunState::Succeeded)
        .count();
    let created = backend.total_created();
    println!(
        "submit            {:.3} s ({:.0} runs/s)",
        submitted.as_secs_f64(),
        args.runs as f64 / submitted.as_secs_f64()
    );
    println!(
        "wall time         {:.3} s (one worker, from its start to the last run finished)",
        wall.as_secs_f64()
    );
    println!("tasks launched    {created} (expected {tasks}, runs not succeeded: {failed})");
    println!("tasks/s           {:.0}", tasks as f64 / wall.as_secs_f64());
    println!(
        "end to end        {:.3} s, {:.0} tasks/s (submit + drive)",
        total.as_secs_f64(),
        tasks as f64 / total.as_secs_f64()
    );
    println!("redis commands    {commands} (submit and drive, inside Lua included)");
    println!("commands per task {:.2}", commands as f64 / tasks as f64);
    let breakdown: Vec<String> = delta
        .iter()
        .map(|(k, n)| format!("{k} {:.2}", *n as f64 / tasks as f64))
        .collect();
    println!("per task by command: {}", breakdown.join(", "));
    println!(
        "cpu               worker process {own_cpu_used:.2} s, redis-server {redis_cpu_used:.2} s (submit + drive)"
    );
    if created != tasks as u64 || failed > 0 {
        return Err(Error::unavailable(
            "loadgen",
            "not every task ran exactly once",
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("loadgen: {e}");
        std::process::exit(3);
    }
}

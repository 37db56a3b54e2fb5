//! Load generator through the gRPC server: workload W1 (R revision runs × 4
//! stages × 5 instant tasks) submitted with `stagetime.v1.Runs/Submit`,
//! driven by one and then two workers on Redis; prints submit-to-complete
//! throughput and the submit latency p50/p99.
//!
//! The server (`stagetime::grpc::serve` on a loopback port) and the workers
//! (engines with the instant test backend, each with its own Redis
//! connections, as separate worker processes would have) run in this
//! process; submissions go through a real gRPC client.
//!
//! ```text
//! cargo run --release --example loadgen_server -- --runs 500
//! cargo run --release --example loadgen_server -- --runs 500 --url redis://127.0.0.1:6379/0 --clients 16
//! ```
//! Without `--url` (or `REDIS_URL`) it starts its own `redis-server` (from
//! `REDIS_SERVER` or the PATH) on a free loopback port, without persistence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stagetime::engine::{Clock, Engine, EngineConfig, SystemClock};
use stagetime::grpc::ServerConfig;
use stagetime::grpc::client::{Client, ClientConfig};
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::store::{RunState, Store};
use stagetime_core::testkit::InstantBackend;

#[path = "../stagetime-redis/examples/support/w1.rs"]
mod w1;
use w1::OwnRedis;

struct Args {
    runs: usize,
    url: Option<String>,
    clients: usize,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 300,
        url: std::env::var("REDIS_URL").ok(),
        clients: 8,
        batch: 64,
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
            "--clients" => {
                args.clients = value("--clients")?
                    .parse()
                    .map_err(|e| format!("--clients: {e}"))?
            }
            "--batch" => {
                args.batch = value("--batch")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: loadgen_server [--runs R] [--url redis://...] [--clients C] [--batch N]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.runs == 0 || args.clients == 0 || args.batch == 0 {
        return Err("--runs, --clients and --batch must be at least 1".into());
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Figures {
    wall: Duration,
    p50: Duration,
    p99: Duration,
}

async fn phase(args: &Args, url: &str, workers: usize) -> Result<Figures, String> {
    let tag = format!("w{workers}-{:x}", SystemClock.now_ms() & 0xffffff);
    let prefix = format!("loadgen-server-{tag}");
    let config = RedisConfig::new(url).with_prefix(prefix);
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(config.clone())
            .await
            .map_err(|e| e.to_string())?,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(stagetime::grpc::serve(
        listener,
        ServerConfig::default(),
        Arc::clone(&store),
        None,
        stopped(),
    ));
    let mut engines = Vec::new();
    for w in 0..workers {
        let wstore = RedisStore::connect(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let engine = Arc::new(
            Engine::new(Arc::new(wstore), Arc::new(InstantBackend::new())).with_config(
                EngineConfig {
                    consumer: format!("loadgen-{tag}-{w}"),
                    batch: args.batch,
                    claim_wait: Duration::from_millis(100),
                    purge_every: None,
                    housekeeping: None,
                    reconcile_on_start: false,
                    ..EngineConfig::default()
                },
            ),
        );
        engines.push(tokio::spawn(engine.run(stopped())));
    }

    let client = Client::connect(&ClientConfig::new(format!("http://{addr}")))
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let per_client = args.runs.div_ceil(args.clients);
    let mut submitters = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let tag = tag.clone();
        let range = (c * per_client)..((c + 1) * per_client).min(args.runs);
        submitters.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(range.len());
            for i in range {
                let t = Instant::now();
                client
                    .submit(w1::document(i, &tag))
                    .await
                    .map_err(|e| format!("submit: {e}"))?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for s in submitters {
        latencies.extend(s.await.map_err(|e| e.to_string())??);
    }
    // Complete when every run has succeeded (counted from the state index).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats = store
            .stats(SystemClock.now_ms())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the store gives no stats")?;
        let done = stats
            .runs_by_state
            .iter()
            .find(|(s, _)| *s == RunState::Succeeded)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let failed: u64 = stats
            .runs_by_state
            .iter()
            .filter(|(s, _)| matches!(s, RunState::Failed | RunState::Cancelled))
            .map(|(_, n)| *n)
            .sum();
        if failed > 0 {
            return Err(format!("{failed} runs did not succeed"));
        }
        if done as usize >= args.runs {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {done} of {} runs finished", args.runs));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = start.elapsed();
    let _ = stop_tx.send(true);
    for e in engines {
        let _ = e.await;
    }
    let _ = server.await;
    latencies.sort();
    Ok(Figures {
        wall,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let own;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => match OwnRedis::start() {
            Ok(server) => {
                own = server;
                own.url().to_string()
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(3);
            }
        },
    };
    let tasks = args.runs * w1::TASKS_PER_RUN;
    println!(
        "W1 through the server: {} runs x {} stages x {} tasks = {tasks} tasks, instant backend, {} submitting clients, worker batch {}, {url}",
        args.runs,
        w1::STAGES,
        w1::TASKS_PER_STAGE,
        args.clients,
        args.batch
    );
    println!("| workers | submit-to-complete | runs/s | tasks/s | submit p50 | submit p99 |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for workers in [1, 2] {
        match runtime.block_on(phase(&args, &url, workers)) {
            Ok(f) => {
                let secs = f.wall.as_secs_f64();
                println!(
                    "| {workers} | {:.2} s | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
                    secs,
                    args.runs as f64 / secs,
                    tasks as f64 / secs,
                    f.p50.as_secs_f64() * 1000.0,
                    f.p99.as_secs_f64() * 1000.0
                );
            }
            Err(e) => {
                eprintln!("phase with {workers} workers failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

//! Load generator for the webhook front door: signed GitHub push deliveries
//! (each with a new delivery id) posted to `/hooks/github` by C concurrent
//! clients over loopback HTTP; prints deliveries accepted per second
//! (verify + filter + dedup + record in Redis) and the accept latency
//! p50/p99. The HTTP surface runs in this process on Redis; no intake loop
//! runs, so only the answer path is measured.
//!
//! ```text
//! cargo run --release --example loadgen_webhooks -- --deliveries 20000 --clients 32
//! ```
//! Without `--url` (or `REDIS_URL`) it starts its own `redis-server` (from
//! `REDIS_SERVER` or the PATH) on a free loopback port, without persistence.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stagetime::forge::Repositories;
use stagetime::forge::intake::ForgeMetrics;
use stagetime::forge::signature::github_signature;
use stagetime::http::{HttpState, router, serve};
use stagetime::redis::{RedisConfig, RedisStore};
use stagetime::store::Store;
use stagetime_core::testkit::w1::OwnRedis;
use tokio::sync::RwLock;

const SECRET: &str = "loadgen secret";

struct Args {
    deliveries: usize,
    clients: usize,
    url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        deliveries: 10_000,
        clients: 32,
        url: std::env::var("REDIS_URL").ok(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--deliveries" => {
                args.deliveries = value("--deliveries")?
                    .parse()
                    .map_err(|e| format!("--deliveries: {e}"))?
            }
            "--clients" => {
                args.clients = value("--clients")?
                    .parse()
                    .map_err(|e| format!("--clients: {e}"))?
            }
            "--url" => args.url = Some(value("--url")?),
            "-h" | "--help" => {
                return Err(
                    "usage: loadgen_webhooks [--deliveries N] [--clients C] [--url redis://...]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.deliveries == 0 || args.clients == 0 {
        return Err("--deliveries and --clients must be at least 1".into());
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

/// The documented GitHub push example, as one delivery body.
fn push_body(n: usize) -> Vec<u8> {
    // n + 1: an all-zero `after` is a branch deletion.
    let sha = format!("{:040x}", n + 1);
    serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": sha,
        "created": false, "deleted": false, "forced": false,
        "commits": [{
            "id": sha, "message": "Update README.md", "timestamp": "2019-05-15T15:20:41Z",
            "author": {"name": "Codertocat", "email": "c@example.com", "username": "Codertocat"},
            "added": [], "removed": [], "modified": ["README.md"]
        }],
        "head_commit": {"id": sha, "timestamp": "2019-05-15T15:20:41Z",
            "author": {"name": "Codertocat", "username": "Codertocat"},
            "added": [], "removed": [], "modified": ["README.md"]},
        "repository": {"id": 186853002, "name": "Hello-World", "full_name": "Codertocat/Hello-World",
            "html_url": "https://github.com/Codertocat/Hello-World",
            "clone_url": "https://github.com/Codertocat/Hello-World.git", "fork": false},
        "pusher": {"name": "Codertocat"},
        "sender": {"login": "Codertocat"}
    }))
    .unwrap_or_default()
}

async fn run(args: Args) -> Result<(), String> {
    let own;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => {
            own = OwnRedis::start()?;
            own.url().to_string()
        }
    };
    let prefix = format!(
        "loadgen-webhooks-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            & 0xffffff
    );
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(RedisConfig::new(url).with_prefix(prefix))
            .await
            .map_err(|e| e.to_string())?,
    );
    let repos = Repositories::parse(
        "repositories:\n  - name: hello\n    provider: github\n    url: https://github.com/Codertocat/Hello-World\n    webhook_secret_env: LOADGEN_SECRET\n",
        &|_| Some(SECRET.to_string()),
    )
    .map_err(|e| e.to_string())?;
    let state = HttpState::new(
        store,
        Arc::new(RwLock::new(Arc::new(repos))),
        ForgeMetrics::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router(state), async move {
        let _ = stop_rx.await;
    }));

    // Bodies and signatures prepared up front: the clock measures the server.
    let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..args.deliveries)
            .map(|n| {
                let body = push_body(n);
                let sig = github_signature(SECRET.as_bytes(), &body);
                (body, sig)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let endpoint = format!("http://{addr}/hooks/github");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (bodies, next, endpoint) = (Arc::clone(&bodies), Arc::clone(&next), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            let mut refused = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, sig)) = bodies.get(n) else {
                    break;
                };
                let t = Instant::now();
                let resp = http
                    .post(&endpoint)
                    .header("content-type", "application/json")
                    .header("x-github-event", "push")
                    .header("x-github-delivery", format!("loadgen-{n}"))
                    .header("x-hub-signature-256", sig)
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 202 => latencies.push(t.elapsed()),
                    _ => refused += 1,
                }
            }
            (latencies, refused)
        }));
    }
    let mut latencies = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (l, r) = t.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        refused += r;
    }
    let wall = started.elapsed();
    let _ = stop_tx.send(());
    let _ = server.await;
    latencies.sort();
    println!(
        "webhooks: {} deliveries accepted in {:.2} s by {} clients: {:.0} deliveries/s; accept p50 {:.2} ms, p99 {:.2} ms; {} not accepted",
        latencies.len(),
        wall.as_secs_f64(),
        args.clients,
        latencies.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        refused
    );
    if refused > 0 {
        return Err(format!("{refused} deliveries were not accepted"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(3);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(3)
        }
    }
}

//! Load generator for the webhook front door: signed GitHub push deliveries
//! (each with a new delivery id) posted to `/hooks/github` by C concurrent
//! clients over loopback HTTP; prints deliveries accepted per second
//! (verify + filter + dedup + record in Redis) and the accept latency
//! p50/p99. The HTTP surface runs in this process on Redis; no intake loop
//! runs, so only the answer path is measured.
//!
//! With `--launch N` it then measures push-to-first-task-launched latency:
//! N pushes one after another, each through the whole path — accept, the
//! intake loop fetching the pipeline file from a forge emulator (an axum
//! app on loopback answering like GitHub's contents API), submission, and
//! an engine (instant test backend) launching the first task; the latency
//! is the first launch time the engine stored minus the time the push was
//! sent (wall clock, ms).
//!
//! ```text
//! cargo run --release --example loadgen_webhooks -- --deliveries 20000 --clients 32 --launch 200
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
#[path = "../stagetime-redis/examples/support/w1.rs"]
mod w1;
use tokio::sync::RwLock;
use w1::OwnRedis;

const SECRET: &str = "loadgen secret";

struct Args {
    deliveries: usize,
    clients: usize,
    url: Option<String>,
    launch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        deliveries: 10_000,
        clients: 32,
        url: std::env::var("REDIS_URL").ok(),
        launch: 0,
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
            "--launch" => {
                args.launch = value("--launch")?
                    .parse()
                    .map_err(|e| format!("--launch: {e}"))?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: loadgen_webhooks [--deliveries N] [--clients C] [--url redis://...] [--launch N]"
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
    push_body_at(n, "main")
}

fn push_body_at(n: usize, branch: &str) -> Vec<u8> {
    // n + 1: an all-zero `after` is a branch deletion.
    let sha = format!("{:040x}", n + 1);
    serde_json::to_vec(&serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
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
        RedisStore::connect(RedisConfig::new(url.clone()).with_prefix(prefix.clone()))
            .await
            .map_err(|e| e.to_string())?,
    );
    let state = HttpState::new(store, repositories(None)?, ForgeMetrics::default());
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
    let _ = stop_tx.send(());
    let _ = server.await;
    if args.launch > 0 {
        launch_phase(&args, &url, &prefix).await?;
    }
    Ok(())
}

/// The one repository, its API at `api_url` when given.
fn repositories(
    api_url: Option<&str>,
) -> Result<stagetime::forge::intake::SharedRepositories, String> {
    let api = api_url
        .map(|u| format!("    api_url: {u}\n"))
        .unwrap_or_default();
    let repos = Repositories::parse(
        &format!(
            "repositories:\n  - name: hello\n    provider: github\n    url: https://github.com/Codertocat/Hello-World\n{api}    webhook_secret_env: LOADGEN_SECRET\n"
        ),
        &|_| Some(SECRET.to_string()),
    )
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(RwLock::new(Arc::new(repos))))
}

/// A forge answering GitHub's contents API with the same two-stage
/// pipeline for every commit; its base URL.
async fn start_emulator() -> Result<String, String> {
    use base64::Engine as _;
    let file =
        "tasks:\n  - { name: a, command: 'true' }\n  - { name: b, stage: 1, command: 'true' }\n";
    let body = serde_json::json!({
        "type": "file", "encoding": "base64",
        "content": base64::engine::general_purpose::STANDARD.encode(file),
    })
    .to_string();
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Push-to-first-task-launched latency, one push at a time.
async fn launch_phase(args: &Args, url: &str, prefix: &str) -> Result<(), String> {
    use stagetime::engine::{Clock, Engine, EngineConfig, SystemClock};
    use stagetime::forge::client::{ClientConfig, ForgeClient};
    use stagetime::forge::intake::IntakeLoop;
    use stagetime::forge::{Parsed, Provider};
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // A store of its own: the accept phase left its deliveries pending.
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(RedisConfig::new(url).with_prefix(format!("{prefix}-launch")))
            .await
            .map_err(|e| e.to_string())?,
    );
    let emulator = start_emulator().await?;
    let repos = repositories(Some(&emulator))?;
    let state = HttpState::new(
        Arc::clone(&store),
        Arc::clone(&repos),
        ForgeMetrics::default(),
    );
    let wake = Arc::clone(&state.wake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let endpoint = format!(
        "http://{}/hooks/github",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let server = tokio::spawn(serve(listener, router(state), stopped()));
    let intake = IntakeLoop {
        store: Arc::clone(&store),
        repos,
        client: ForgeClient::new(ClientConfig::default()).map_err(|e| e.to_string())?,
        metrics: ForgeMetrics::default(),
        wake,
        poll: Duration::from_secs(5),
        report_wake: None,
    };
    let intake = tokio::spawn(intake.run(stopped()));
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store),
            Arc::new(stagetime_core::testkit::InstantBackend::new()),
        )
        .with_config(EngineConfig {
            consumer: "loadgen-webhooks".into(),
            claim_wait: Duration::from_millis(100),
            purge_every: None,
            housekeeping: None,
            reconcile_on_start: false,
            ..EngineConfig::default()
        }),
    );
    let engine = tokio::spawn(engine.run(stopped()));
    let http = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(args.launch);
    for i in 0..args.launch {
        // Commits unlike the accept phase's, on a branch of their own.
        let n = args.deliveries + 1 + i;
        let body = push_body_at(n, "launch");
        let Ok(Parsed::Event(event)) = stagetime::forge::event::parse_hub(
            Provider::Github,
            "push",
            "x",
            serde_json::from_slice(&body).map_err(|e| e.to_string())?,
        ) else {
            return Err("the push does not parse".into());
        };
        let run = stagetime::forge::trigger::run_id("hello", &event);
        let sig = github_signature(SECRET.as_bytes(), &body);
        let sent = SystemClock.now_ms();
        let resp = http
            .post(&endpoint)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("launch-{n}"))
            .header("x-hub-signature-256", sig)
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 202 {
            return Err(format!("push {i} answered {}", resp.status()));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let launched = loop {
            if let Ok(r) = store.load_run(&run).await
                && let Some(t) = r.timings.iter().filter_map(|t| t.first_launch_ms).min()
            {
                break t;
            }
            if Instant::now() > deadline {
                return Err(format!("run {run} did not launch within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        latencies.push(Duration::from_millis(launched.saturating_sub(sent)));
    }
    let _ = stop_tx.send(true);
    let _ = intake.await;
    let _ = engine.await;
    let _ = server.await;
    latencies.sort();
    println!(
        "push to first launch: {} pushes one at a time: p50 {} ms, p99 {} ms (file fetch from a loopback emulator included)",
        latencies.len(),
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis()
    );
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

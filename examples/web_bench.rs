//! `web_bench`: the figures of docs/benchmarks.md for the web page.
//!
//! 1. Render time of a run's page for a 500-task run (5 stages of 100,
//!    every other task with a `needs` edge): the HTML alone, and a whole
//!    `GET /runs/{id}` over HTTP (store read, view, render) from an
//!    in-process server on a memory store.
//! 2. The server's CPU with N open run pages (web event streams) against N
//!    gRPC watch streams: all on one run, then each on a run of its own; a
//!    `server --memory` child, queued runs nobody changes (both kinds of
//!    stream poll versions every 250 ms), CPU time of the child over a
//!    10 s window.
//!
//! `cargo run --release --all-features --example web_bench -- [N]` (N
//! default 1000; build the `server` example in the same profile first).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stagetime::control::RunControl;
use stagetime::grpc::v1;
use stagetime::web::{WebState, render_run_page, router};
use stagetime::{MemoryStore, RevisionRunSpec, Store, TaskSpec};

fn spec_of(tasks: usize) -> RevisionRunSpec {
    let mut spec = RevisionRunSpec::new("bench", "c0ffee");
    spec.branch = Some("main".into());
    for i in 0..tasks {
        let stage = (i / 100) as u32;
        let mut t = TaskSpec::new(format!("task-{i:03}"))
            .stage(stage)
            .command("true");
        if stage > 0 && i % 2 == 0 {
            t = t.needs([format!("task-{:03}", i - 100)]);
        }
        if i % 7 == 0 {
            t = t.can_fail();
        }
        spec = spec.task(t);
    }
    spec.finally_task(TaskSpec::new("report").command("true"))
}

fn stats(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let p50 = ms[ms.len() / 2];
    let p99 = ms[(ms.len() * 99 / 100).min(ms.len() - 1)];
    println!(
        "{name}: mean {mean:.2} ms, p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({} runs)",
        ms[ms.len() - 1],
        ms.len()
    );
}

/// utime + stime of `pid`, in seconds (USER_HZ = 100).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn measure(pid: u32, what: &str, n: usize) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let used = cpu_seconds(pid) - start;
    println!(
        "server CPU with {n} {what}: {used:.2} s over 10 s ({:.1}% of a core)",
        used * 10.0
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);

    // 1. Render time.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = RunControl::new(Arc::clone(&store));
    let id = control.submit(spec_of(500), None).await.unwrap().id;
    let view = control.view(&id).await.unwrap();
    let state = WebState::new(Arc::clone(&store));
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let page = render_run_page(&state, &view);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = page.len();
    }
    println!("run page of {} tasks: {bytes} bytes", view.tasks.len());
    stats("render (HTML only)", ms);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stagetime::http::serve(
        listener,
        router(state),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let mut ms = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let r = client
            .get(format!("{base}/runs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats("GET /runs/{id} over HTTP (read, view, render)", ms);

    // 2. N open pages against N gRPC watches.
    let dir = std::env::current_exe().unwrap();
    let server_exe = dir.parent().unwrap().join("server");
    let mut child = Command::new(&server_exe)
        .args([
            "--memory",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_exe.display()));
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut http, mut grpc) = (String::new(), String::new());
    while grpc.is_empty() {
        let line = lines.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("http listening on ") {
            http = a.to_string();
        }
        if let Some(a) = line.strip_prefix("grpc listening on ") {
            grpc = a.to_string();
        }
    }
    let config = stagetime::grpc::client::ClientConfig::new(format!("http://{grpc}"));
    let typed = stagetime::grpc::client::Client::connect(&config)
        .await
        .unwrap();
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        let mut spec = spec_of(20);
        spec.commit = format!("c0ffee{i}");
        let doc = serde_json::to_string(&spec).unwrap();
        runs.push(typed.submit(doc).await.unwrap().id.to_string());
    }
    let run = runs[0].clone();
    measure(pid, "streams (idle server)", 0).await;

    let mut pages = Vec::with_capacity(n);
    for _ in 0..n {
        let r = client
            .get(format!(
                "http://{http}/api/v1/runs/{run}/events?format=html"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        pages.push(r);
    }
    measure(pid, "open run pages (one run)", n).await;
    drop(pages);

    let mut watches = Vec::with_capacity(n);
    let mut stubs = None;
    for i in 0..n {
        // A connection per 100 streams (HTTP/2's usual concurrency limit).
        if i % 100 == 0 {
            stubs = Some(
                stagetime::grpc::client::connect_stubs(&config)
                    .await
                    .unwrap(),
            );
        }
        let mut runs = stubs.as_ref().unwrap().runs.clone();
        let s = runs
            .watch(v1::WatchRequest {
                id: run.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        watches.push(s);
    }
    measure(pid, "gRPC watch streams (one run)", n).await;
    drop(watches);

    // The same, each stream on a run of its own.
    let mut pages = Vec::with_capacity(n);
    for run in &runs {
        let r = client
            .get(format!(
                "http://{http}/api/v1/runs/{run}/events?format=html"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        pages.push(r);
    }
    measure(pid, "open run pages, each on its own run", n).await;
    drop(pages);
    let mut watches = Vec::with_capacity(n);
    for (i, run) in runs.iter().enumerate() {
        if i % 100 == 0 {
            stubs = Some(
                stagetime::grpc::client::connect_stubs(&config)
                    .await
                    .unwrap(),
            );
        }
        let mut client = stubs.as_ref().unwrap().runs.clone();
        let s = client
            .watch(v1::WatchRequest { id: run.clone() })
            .await
            .unwrap()
            .into_inner();
        watches.push(s);
    }
    measure(pid, "gRPC watch streams, each on its own run", n).await;
    drop(watches);
    let _ = child.kill();
    let _ = child.wait();
}

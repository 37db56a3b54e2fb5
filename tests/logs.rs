//! Task logs through the server, end to end with real processes: a worker
//! with the local backend keeps each attempt's output in Redis while it
//! runs; `stagetime logs -f` follows a running task to its end through the
//! server's `Logs` stream; after housekeeping deleted the attempt
//! directories, `stagetime logs` still prints the archived tail.
#![cfg(all(feature = "grpc", feature = "redis", feature = "kube"))]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use stagetime::grpc::client::{Client, ClientConfig};
use stagetime::logs::LogQuery;
use stagetime::store::RunId;
use stagetime_core::ErrorKind;
use support::{Proc, examples, text};

fn exe(name: &str) -> PathBuf {
    examples(&["stagetime", "server", "worker"]).join(name)
}

fn cli(dir: &Path, server: &str, args: &[&str]) -> Output {
    Command::new(exe("stagetime"))
        .args(args)
        .env("STAGETIME_SERVER", server)
        .env_remove("STAGETIME_AUTH_TOKEN")
        .current_dir(dir)
        .output()
        .expect("run the CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_logs_are_followed_through_the_server_and_outlive_housekeeping() {
    let Some(redis) = support::redis::shared() else {
        stagetime_core::testkit::skip_or_fail("redis-server (REDIS_SERVER or PATH)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = redis.config("logs").prefix;
    let url = redis.url();
    let mut server = Proc::start(
        &exe("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--redis-url",
            &url,
            "--redis-prefix",
            &prefix,
            "--backend",
            "local",
        ],
        &[],
        d,
    );
    let api = format!("http://{}", server.wait_line("grpc listening on "));
    let workdir = d.join("work");
    let mut worker = Proc::start(
        &exe("worker"),
        &[
            "--redis-url",
            &url,
            "--redis-prefix",
            &prefix,
            "--backend",
            "local",
            "--workdir",
            workdir.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        d,
    );
    worker.wait_line("worker ");

    // `slow` writes its last line seconds after its first: a follower that
    // prints it followed the task to its end.
    let marker = d.join("started");
    std::fs::write(
        d.join("logs.yaml"),
        format!(
            "repo: logs\ncommit: c1\ntasks:\n  - name: slow\n    command: \"echo start; touch {}; sleep 2; echo middle; sleep 1; echo end\"\n  - name: check\n    stage: 1\n    command: \"echo oops; echo 'to stderr' >&2; exit 1\"\n",
            marker.display()
        ),
    )
    .unwrap();
    let out = cli(d, &api, &["submit", "logs.yaml", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the task never started: {}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The task is running now: follow it (one task, so no prefixes).
    let followed = cli(d, &api, &["logs", &id, "slow", "-f"]);
    assert_eq!(followed.status.code(), Some(0), "{}", text(&followed));
    assert_eq!(stdout(&followed), "start\nmiddle\nend\n");
    // The whole run, followed to its end: every task in stage order, prefixed.
    let all = cli(d, &api, &["logs", &id, "--follow"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all));
    let expected = "[slow] start\n[slow] middle\n[slow] end\n[check] oops\n[check] to stderr\n";
    assert_eq!(stdout(&all), expected);
    let status = cli(d, &api, &["watch", &id]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "the run failed: {}",
        text(&status)
    );

    // Housekeeping deletes the attempt directories; the logs stay readable.
    let hk = cli(
        d,
        &api,
        &[
            "housekeeping",
            "--backend",
            "local",
            "--workdir",
            workdir.to_str().unwrap(),
            "--ttl",
            "0s",
            "--keep-last",
            "0",
        ],
    );
    assert_eq!(hk.status.code(), Some(0), "{}", text(&hk));
    assert!(
        !workdir.join("runs").join(&id).exists(),
        "housekeeping deleted the run's directory: {}",
        text(&hk)
    );
    let after = cli(d, &api, &["logs", &id]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert_eq!(stdout(&after), expected);
    let one = cli(d, &api, &["logs", &id, "check", "--attempt", "1"]);
    assert_eq!(stdout(&one), "oops\nto stderr\n", "{}", text(&one));

    // The typed client: chunks name their task and attempt; unknown attempts are NOT_FOUND.
    let client = Client::connect(&ClientConfig::new(api.clone()))
        .await
        .unwrap();
    let chunks: Vec<_> = client
        .logs(LogQuery::task(RunId::new(id.clone()).unwrap(), "check"))
        .collect()
        .await;
    let chunks: Vec<_> = chunks.into_iter().map(|c| c.unwrap()).collect();
    assert!(
        chunks
            .iter()
            .all(|c| c.task == "check" && c.attempt == 1 && c.step.is_none())
    );
    let missing: Vec<_> = client
        .logs(LogQuery {
            attempt: Some(2),
            ..LogQuery::task(RunId::new(id.clone()).unwrap(), "check")
        })
        .collect()
        .await;
    let err = missing[0].as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let bad = cli(d, &api, &["logs", &id, "deploy"]);
    assert_ne!(bad.status.code(), Some(0));
    assert!(text(&bad).contains("deploy"), "{}", text(&bad));
    assert_eq!(worker.terminate(), Some(0), "{}", worker.log());
    let _ = server.terminate();
}

/// `stagetime run FILE` (embedded, local backend) with `args`, in `dir`.
fn run_embedded(dir: &Path, file: &str, args: &[&str]) -> Output {
    let mut all = vec!["run", file];
    all.extend_from_slice(args);
    Command::new(exe("stagetime"))
        .args(&all)
        .current_dir(dir)
        .output()
        .expect("run the CLI")
}

const TWO_TASKS: &str = "repo: demo\ncommit: abc\ntasks:\n  - name: build\n    command: \"echo compiling; echo 'built ok'\"\n  - name: test\n    stage: 1\n    command: \"for i in $(seq 1 30); do echo case $i; done; echo 'assertion failed' >&2; exit 4\"\n";

#[test]
fn run_with_logs_streams_every_task_prefixed_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), TWO_TASKS).unwrap();
    let out = run_embedded(dir.path(), "p.yaml", &["--logs"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = stdout(&out);
    let task_lines: Vec<&str> = printed.lines().filter(|l| l.starts_with('[')).collect();
    let mut expected = vec![
        "[build] compiling".to_string(),
        "[build] built ok".to_string(),
    ];
    expected.extend((1..=30).map(|i| format!("[test] case {i}")));
    expected.push("[test] assertion failed".to_string());
    assert_eq!(task_lines, expected, "{printed}");
    assert!(
        !printed.contains("last 20 of"),
        "with --logs the output was shown already: {printed}"
    );
}

#[test]
fn run_prints_the_tail_of_each_failed_tasks_log_with_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), TWO_TASKS).unwrap();
    let out = run_embedded(dir.path(), "p.yaml", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = stdout(&out);
    assert!(
        !printed.contains("compiling"),
        "task output is hidden: {printed}"
    );
    let (_, tail) = printed
        .split_once("--- test (attempt 1): last 20 of 31 log lines ---\n")
        .unwrap_or_else(|| panic!("no tail of the failed task: {printed}"));
    let mut expected: String = (12..=30).map(|i| format!("  case {i}\n")).collect();
    expected.push_str("  assertion failed\n");
    assert_eq!(tail, expected);
    assert!(
        !printed.contains("--- build"),
        "only failed tasks: {printed}"
    );
}

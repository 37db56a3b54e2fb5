//! End-to-end tests of the distributed deployment with real processes: the
//! `server` and `worker` examples on a real redis-server (started by the
//! stagetime-redis test harness), driven by the `stagetime` CLI and by gRPC
//! clients. The auth and bad-input cases run the server with `--memory`
//! and need no Redis.
#![cfg(all(feature = "grpc", feature = "redis", feature = "kube"))]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stagetime::grpc::{legacy, v1};
use support::{Proc, examples, http_get, text};
use tonic::Code;

/// The example `name`; the three examples are built together, once.
fn exe(name: &str) -> PathBuf {
    examples(&["stagetime", "server", "worker"]).join(name)
}

/// A server (and its gRPC URL).
fn server(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let (p, addr, _) = server_at(dir, args, env);
    (p, format!("http://{addr}"))
}

/// A server, its gRPC address and its metrics address.
fn server_at(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Proc, String, String) {
    let mut all = vec!["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut p = Proc::start(&exe("server"), &all, env, dir);
    let addr = p.wait_line("grpc listening on ");
    let metrics = p.wait_line("metrics listening on ");
    (p, addr, metrics)
}

/// The value of a sample line `name{...} value` (summed over label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A worker with the local backend on `workdir` (shared by the workers of
/// one test: an attempt's directory marks its launch), and its metrics
/// address.
fn worker_at(dir: &Path, redis_url: &str, prefix: &str, workdir: &Path) -> (Proc, String) {
    let mut p = Proc::start(
        &exe("worker"),
        &[
            "--redis-url",
            redis_url,
            "--redis-prefix",
            prefix,
            "--backend",
            "local",
            "--workdir",
            workdir.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            // The default reclaim time: a dead worker's claims move on
            // within seconds because live workers renew theirs.
            "--concurrency",
            "16",
        ],
        &[],
        dir,
    );
    let metrics = p.wait_line("metrics listening on ");
    p.wait_line("worker ");
    (p, metrics)
}

fn cli(dir: &Path, server: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(exe("stagetime"));
    cmd.args(args)
        .env("STAGETIME_SERVER", server)
        .env_remove("STAGETIME_AUTH_TOKEN")
        .current_dir(dir);
    if let Some(t) = token {
        cmd.env("STAGETIME_AUTH_TOKEN", t);
    }
    cmd.output().expect("run the CLI")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The generated stubs: these tests check the wire (codes, trailers, the
/// legacy services), below the typed client the CLI uses.
async fn connect(url: &str, token: Option<&str>) -> stagetime::grpc::client::Stubs {
    let mut c = stagetime::grpc::client::ClientConfig::new(url);
    c.token = token.map(String::from);
    stagetime::grpc::client::connect_stubs(&c)
        .await
        .expect("connect")
}

/// Redis for the distributed tests, or `None` (skipped loudly, or a failure
/// under STAGETIME_REQUIRE_SERVERS=1).
fn redis() -> Option<&'static support::redis::RedisServer> {
    let s = support::redis::shared();
    if s.is_none() {
        stagetime_core::testkit::skip_or_fail("redis-server (REDIS_SERVER or PATH)");
    }
    s
}

/// A server and two workers on Redis under a fresh key prefix, in a
/// directory of their own; the workers share `<dir>/work`.
struct Deployment {
    dir: tempfile::TempDir,
    server: Proc,
    /// The server's gRPC URL.
    api: String,
    server_metrics: String,
    /// The workers and their metrics addresses.
    workers: [(Proc, String); 2],
}

/// Starts a [`Deployment`] whose key prefix names `name`; `None` when Redis
/// is skipped.
fn deployment(name: &str) -> Option<Deployment> {
    let redis = redis()?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = redis.config(name).prefix;
    let url = redis.url();
    let (server, addr, server_metrics) =
        server_at(d, &["--redis-url", &url, "--redis-prefix", &prefix], &[]);
    let workdir = d.join("work");
    let workers = [
        worker_at(d, &url, &prefix, &workdir),
        worker_at(d, &url, &prefix, &workdir),
    ];
    Some(Deployment {
        dir,
        server,
        api: format!("http://{addr}"),
        server_metrics,
        workers,
    })
}

/// The legacy request of `examples/pipelines/legacy.json`.
fn legacy_request() -> legacy::CreateRevisionRunRequest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipelines/legacy.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    legacy::CreateRevisionRunRequest {
        repo_name: s(&v, "repo_name"),
        pushed_at: s(&v, "pushed_at"),
        author: s(&v, "author"),
        repo_url: s(&v, "repo_url"),
        commit_id: s(&v, "commit_id"),
        pipelineruns: v["pipelineruns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| legacy::Pipelinerun {
                name: s(p, "name"),
                canfail: p["canfail"].as_bool().unwrap_or(false),
                stage: p["stage"].as_f64().unwrap_or(0.0),
                params: s(p, "params"),
                resolver_params: s(p, "resolverParams"),
                listparams: s(p, "listparams"),
                workspaces: s(p, "workspaces"),
                volume_claim_templates: s(p, "volumeClaimTemplates"),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_cancel_rerun_and_legacy_through_server_and_two_workers() {
    let Some(Deployment {
        dir,
        server: _server,
        api,
        server_metrics,
        workers: [(_w1, w1_metrics), (_w2, w2_metrics)],
    }) = deployment("e2e")
    else {
        return;
    };
    let d = dir.path();

    // 1. Submit through the CLI and wait: `b` fails the first time.
    let events = d.join("events");
    let marker = d.join("marker");
    let spec = format!(
        r#"repo: e2e
commit: c1
tasks:
  - {{name: a, stage: 0, command: "echo a >> {ev}"}}
  - {{name: b, stage: 1, command: "echo b >> {ev}; test -f {m} || {{ touch {m}; exit 1; }}"}}
finally:
  - {{name: f, command: "echo f >> {ev}"}}
"#,
        ev = events.display(),
        m = marker.display()
    );
    std::fs::write(d.join("run.yaml"), spec).unwrap();
    let out = cli(d, &api, &["submit", "run.yaml", "--wait"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "the run fails: {t}");
    assert!(t.contains("run e2e-c1-") && t.contains("failed"), "{t}");
    let id = t
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_whitespace().next())
        })
        .unwrap()
        .trim_end_matches(':')
        .to_string();

    // Submitting the same document again creates nothing.
    let again = cli(d, &api, &["submit", "run.yaml", "--output", "json"], None);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(json(&again)["id"], id.as_str());
    assert_eq!(json(&again)["created"], false);

    // 2. Status: per task status, attempts and handles.
    let st = cli(d, &api, &["status", &id, "--output", "json"], None);
    let v = json(&st);
    assert_eq!(v["state"], "failed", "{v}");
    let task = |v: &serde_json::Value, n: &str| {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(task(&v, "a")["status"], "succeeded");
    assert_eq!(task(&v, "b")["status"], "failed");
    assert!(
        task(&v, "b")["handle"].as_str().unwrap().ends_with(".log"),
        "{v}"
    );

    // The file's graph, coloured with this run's statuses; a run of another
    // file is refused.
    let g = cli(d, &api, &["graph", "run.yaml", "--run", &id], None);
    let dot = text(&g);
    assert_eq!(g.status.code(), Some(0), "{dot}");
    assert!(
        dot.contains("\"b\" [label=\"b\\nfailed\", style=filled"),
        "{dot}"
    );
    // Stage 1 waits on the barrier after stage 0.
    assert!(dot.contains("\"a\" -> \"stage 0 done\""), "{dot}");
    assert!(dot.contains("\"stage 0 done\" -> \"b\""), "{dot}");
    std::fs::write(
        d.join("other.yaml"),
        "repo: e2e\ncommit: c1\ntasks:\n  - {name: zzz, command: \"true\"}\n",
    )
    .unwrap();
    let g = cli(d, &api, &["graph", "other.yaml", "--run", &id], None);
    assert_eq!(g.status.code(), Some(2), "{}", text(&g));
    assert!(text(&g).contains("is not a run of"), "{}", text(&g));

    // 3. Rerun after the failure: only what had not succeeded runs again.
    let out = cli(d, &api, &["rerun", &id, "--wait"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the rerun succeeds: {}",
        text(&out)
    );
    let lines = std::fs::read_to_string(&events).unwrap();
    let count = |n: &str| lines.lines().filter(|l| *l == n).count();
    assert_eq!(count("a"), 1, "a succeeded and is kept: {lines}");
    assert_eq!(count("b"), 2, "b runs again: {lines}");
    let v = json(&cli(d, &api, &["status", &id, "--output", "json"], None));
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(task(&v, "a")["attempt"], 1, "{v}");
    // A rerun request carrying a version the run has left (a retry of the
    // one above) is refused: the run does not go a third time.
    let mut rc = connect(&api, None).await;
    let now = rc
        .runs
        .get(v1::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .version;
    let stale = rc
        .runs
        .rerun(v1::RerunRequest {
            id: id.clone(),
            expected_version: now - 1,
            tasks: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");

    // Watching a finished run shows it and exits with its status.
    let out = cli(d, &api, &["watch", &id], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("succeeded"), "{}", text(&out));

    // 4. Cancel a running run: watch ends with exit 1.
    std::fs::write(
        d.join("slow.yaml"),
        "repo: e2e\ncommit: slow\ntasks:\n  - {name: s, command: \"sleep 60\"}\n",
    )
    .unwrap();
    let out = cli(d, &api, &["submit", "slow.yaml", "--output", "json"], None);
    let slow = json(&out)["id"].as_str().unwrap().to_string();
    let mut c = connect(&api, None).await;
    // Wait until the task runs (observed through the API, no timed assertion).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = c
            .runs
            .get(v1::GetRequest { id: slow.clone() })
            .await
            .unwrap()
            .into_inner();
        if run.tasks[0].status() == v1::TaskStatus::Running {
            break;
        }
        assert!(Instant::now() < deadline, "the slow task never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(d, &api, &["cancel", &slow], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cli(d, &api, &["watch", &slow], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled run exits 1: {}",
        text(&out)
    );
    assert!(text(&out).contains("cancelled"), "{}", text(&out));

    // 5. The legacy call with the legacy JSON file: created once, then
    // recognised; the CLI's legacy file is the same run.
    let request = legacy_request();
    let r = c
        .create
        .create_revision_run(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.result(), legacy::response::Result::Success, "{r:?}");
    let data = String::from_utf8(r.success.unwrap().data).unwrap();
    let legacy_id = data
        .strip_prefix("GOOD JOB - REVISIONRUN WAS CREATED: run ")
        .unwrap_or_else(|| panic!("the earlier server's text first: {data}"))
        .to_string();
    let r = c
        .create
        .create_revision_run(request)
        .await
        .unwrap()
        .into_inner();
    let data = String::from_utf8(r.success.unwrap().data).unwrap();
    assert!(
        data.contains(&legacy_id) && data.contains("it existed already"),
        "{data}"
    );
    let legacy_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pipelines/legacy.json");
    let out = cli(
        d,
        &api,
        &["submit", legacy_file.to_str().unwrap(), "--output", "json"],
        None,
    );
    assert_eq!(json(&out)["id"], legacy_id.as_str(), "{}", text(&out));
    assert_eq!(json(&out)["created"], false);
    // GetStatus by run id and by commit id. The legacy entries are Tekton
    // pipelines, which the local backend cannot run: the run ends failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c
            .statuses
            .get_status(legacy::StatusGetRequest {
                revision_run_id: "4f1c2e9a77".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(s.id, legacy_id);
        if s.status == "FAILED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "legacy run stuck in {}",
            s.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = c
        .statuses
        .get_status(legacy::StatusGetRequest {
            revision_run_id: legacy_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        (s.id.as_str(), s.status.as_str()),
        (legacy_id.as_str(), "FAILED")
    );
    let run = c
        .runs
        .get(v1::GetRequest { id: legacy_id })
        .await
        .unwrap()
        .into_inner();
    assert!(
        run.tasks[0].message.contains("no command"),
        "the reason is given: {:?}",
        run.tasks[0]
    );

    // List filters by repo and state.
    let out = cli(
        d,
        &api,
        &[
            "list",
            "--repo",
            "e2e",
            "--state",
            "succeeded",
            "--output",
            "json",
        ],
        None,
    );
    let rows = json(&out);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["id"], id.as_str());

    // Metrics: the server counts requests by method and code; the workers
    // count transitions and task durations; probes answer.
    let m = http_get(&server_metrics, "/metrics");
    assert!(
        m.contains("stagetime_grpc_requests_total{method=\"Submit\",code=\"Ok\"}"),
        "{m}"
    );
    assert!(metric(&m, "stagetime_grpc_requests_total") >= 5.0, "{m}");
    assert!(http_get(&server_metrics, "/readyz").contains("200 OK"));
    let transitions: f64 = [&w1_metrics, &w2_metrics]
        .iter()
        .map(|a| metric(&http_get(a, "/metrics"), "stagetime_transitions_total"))
        .sum();
    assert!(transitions >= 10.0, "transitions counted: {transitions}");
    let durations: f64 = [&w1_metrics, &w2_metrics]
        .iter()
        .map(|a| {
            metric(
                &http_get(a, "/metrics"),
                "stagetime_task_duration_seconds_count",
            )
        })
        .sum();
    assert!(durations >= 3.0, "task durations observed: {durations}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_mid_runs_loses_nothing_and_repeats_nothing() {
    let Some(Deployment {
        dir,
        server: _server,
        api,
        workers: [(mut w1, _), (mut w2, _)],
        ..
    }) = deployment("kill")
    else {
        return;
    };
    let d = dir.path();
    let launches = d.join("launches");
    let successes = d.join("successes");
    // Default settings: no timeouts, no retries. Every attempt appends its
    // key when it starts, and again as the last thing it does when it
    // succeeds. The attempts the killed worker was running are settled by
    // the survivor (their processes stopped) and retried as infrastructure
    // failures.
    let mut ids = Vec::new();
    for r in 0..6 {
        let mut spec = format!("repo: kill\ncommit: c{r}\ntasks:\n");
        for stage in 0..3 {
            for t in 0..2 {
                spec.push_str(&format!(
                    "  - {{name: t{stage}-{t}, stage: {stage}, command: \"k=$STAGETIME_RUN_ID/$STAGETIME_TASK/$STAGETIME_ATTEMPT; echo $k >> {}; sleep 1; echo $k >> {}\"}}\n",
                    launches.display(),
                    successes.display()
                ));
            }
        }
        let file = format!("kill{r}.yaml");
        std::fs::write(d.join(&file), spec).unwrap();
        let out = cli(d, &api, &["submit", &file, "--output", "json"], None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        ids.push(json(&out)["id"].as_str().unwrap().to_string());
    }
    // Kill the first worker while it runs attempts (its live attempts are
    // listed with it as their supervisor).
    let live = d.join("work/runs/.live");
    let owner = format!("\"owner\":{{\"pid\":{},", w1.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let owned = std::fs::read_dir(&live)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&owner)));
        if owned {
            break;
        }
        assert!(Instant::now() < deadline, "worker 1 never ran an attempt");
        std::thread::sleep(Duration::from_millis(20));
    }
    w1.kill9();
    let mut lost = 0;
    for id in &ids {
        let out = cli(d, &api, &["watch", id], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {id} completes: {}\nworker 2: {}",
            text(&out),
            w2.log()
        );
        let view = json(&cli(d, &api, &["status", id, "--output", "json"], None));
        assert_eq!(view["state"], "succeeded", "{view}");
        for task in view["tasks"].as_array().unwrap() {
            let name = task["name"].as_str().unwrap();
            let attempt = task["attempt"].as_u64().unwrap();
            let task_lost = task["lost"].as_u64().unwrap_or(0);
            assert_eq!(task["status"], "succeeded", "{task}");
            // Lost attempts are the only ones beyond the first: the task
            // has no retries of its own.
            assert_eq!(attempt, 1 + task_lost, "{task}");
            if task_lost > 0 {
                let reason = task["lost_reason"].as_str().unwrap_or_default();
                assert!(reason.contains("died"), "{task}");
            }
            lost += task_lost;
            // The recorded success is the last attempt: nothing launched after it.
            let key = format!("{id}/{name}/{attempt}");
            let success_lines = std::fs::read_to_string(&successes).unwrap();
            assert!(
                success_lines.lines().any(|l| l == key),
                "{key} never succeeded"
            );
            let launched = std::fs::read_to_string(&launches).unwrap();
            let later = format!("{id}/{name}/{}", attempt + 1);
            assert!(
                !launched.lines().any(|l| l == later),
                "{later} ran after the recorded success"
            );
        }
    }
    assert!(
        lost >= 1,
        "attempts of the killed worker were retried as lost"
    );
    let count = |path: &Path| {
        let mut seen: HashMap<String, u32> = HashMap::new();
        for l in std::fs::read_to_string(path).unwrap().lines() {
            *seen.entry(l.to_string()).or_default() += 1;
        }
        seen
    };
    let launched = count(&launches);
    let twice: Vec<_> = launched.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts launched twice: {twice:?}");
    let succeeded = count(&successes);
    let twice: Vec<_> = succeeded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "successes recorded twice: {twice:?}");
    // One success per task: a lost attempt that had finished was settled
    // with the exit status its wrapper recorded, not run again. (Only an
    // attempt stopped in the instant between its last command and that
    // record could succeed twice: 1 s of sleep makes it negligible here.)
    let mut per_task: HashMap<String, u32> = HashMap::new();
    for key in succeeded.keys() {
        let task = key.rsplit_once('/').unwrap().0.to_string();
        *per_task.entry(task).or_default() += 1;
    }
    assert_eq!(per_task.len(), ids.len() * 6, "every task succeeded");
    let again: Vec<_> = per_task.iter().filter(|(_, n)| **n > 1).collect();
    assert!(again.is_empty(), "tasks that succeeded twice: {again:?}");
    // The survivor stops cleanly on SIGTERM.
    assert_eq!(w2.terminate(), Some(0), "{}", w2.log());
}

/// The call was refused for want of the right token.
fn unauthenticated<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) {
    assert_eq!(
        r.expect_err("must be refused").code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_calls_need_the_token_while_health_and_reflection_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token_file = d.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (mut server, addr, metrics_addr) = server_at(
        d,
        &[
            "--memory",
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    let api = format!("http://{addr}");

    // The CLI without and with a wrong token is refused; with it, served.
    for token in [None, Some("wrong")] {
        let out = cli(d, &api, &["list"], token);
        assert_eq!(out.status.code(), Some(2), "{token:?}: {}", text(&out));
        assert!(text(&out).contains("Unauthenticated"), "{}", text(&out));
    }
    let out = cli(d, &api, &["list"], Some("s3cret-token"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Every API service checks it.
    let mut anon = connect(&api, None).await;
    unauthenticated(
        anon.statuses
            .get_status(legacy::StatusGetRequest {
                revision_run_id: "x".into(),
            })
            .await,
    );
    unauthenticated(anon.create.create_revision_run(legacy_request()).await);
    let mut wrong = connect(&api, Some("s3cret-tokeN")).await;
    unauthenticated(
        wrong
            .runs
            .submit(v1::SubmitRequest {
                document: "repo: r\ncommit: c\ntasks: [{name: a, command: 'true'}]\n".into(),
            })
            .await,
    );
    let mut ok = connect(&api, Some("s3cret-token")).await;
    let listed = ok
        .runs
        .list(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runs.is_empty(), "refused calls stored nothing");

    // Refusals are counted.
    let m = http_get(&metrics_addr, "/metrics");
    assert!(
        m.contains("method=\"stagetime.v1.Runs/*\",code=\"Unauthenticated\"}"),
        "{m}"
    );

    // Health and reflection answer without a token.
    let channel = tonic::transport::Endpoint::from_shared(api.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "stagetime.v1.Runs", "revisionrun.Statuses"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    use tonic_reflection::pb::v1 as refl;
    let mut reflection = refl::server_reflection_client::ServerReflectionClient::new(channel);
    let request = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "stagetime.v1.Runs",
        "revisionrun.StageTimeApplicationService",
        "revisionrun.Statuses",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Shutdown with a watch open (the run never starts: no worker sees a
    // --memory server): the stream ends, the server exits 0.
    let submitted = ok
        .runs
        .submit(v1::SubmitRequest {
            document: "repo: r\ncommit: c\ntasks: [{name: a, command: 'true'}]\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = ok
        .runs
        .watch(v1::WatchRequest { id: submitted.id })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.state(), v1::RunState::Queued);
    assert_eq!(
        server.terminate(),
        Some(0),
        "clean shutdown: {}",
        server.log()
    );
    let end = stream.message().await;
    assert!(
        matches!(&end, Err(e) if e.code() == Code::Unavailable) || matches!(end, Ok(None)),
        "{end:?}"
    );
}

/// Asserts a refusal with `code` whose message contains `needle`.
#[track_caller]
fn invalid<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), code, "{needle}: {e:?}");
    assert!(
        e.message().contains(needle),
        "{needle:?} not in {:?}",
        e.message()
    );
}

/// A `SubmitRequest` whose `document` may hold any bytes (invalid UTF-8).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSubmit {
    #[prost(bytes = "vec", tag = "1")]
    document: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_rpc_is_refused_naming_the_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_server, api) = server(d, &["--memory"], &[]);
    let mut c = connect(&api, None).await;

    // Submit.
    for (doc, needle) in [
        ("", "document: required"),
        ("{{{ not yaml", "document"),
        ("- a list\n", "document"),
        (
            "commit: c\ntasks: [{name: a, command: 'true'}]\n",
            "repo: required",
        ),
        (
            "repo: r\ncommit: c\ntasks: [{name: Bad_Name, command: 'true'}]\n",
            "tasks[0].name",
        ),
        (
            "repo: r\ncommit: c\ntasks: [{name: a, stage: -1, command: 'true'}]\n",
            "tasks[0].stage",
        ),
        (
            "repo: r\ncommit: c\nunknown: 1\ntasks: [{name: a}]\n",
            "unknown",
        ),
        ("repo: r\ncommit: c\ntasks: []\n", "tasks"),
    ] {
        invalid(
            c.runs
                .submit(v1::SubmitRequest {
                    document: doc.into(),
                })
                .await,
            Code::InvalidArgument,
            needle,
        );
    }
    let big = format!(
        "repo: r\ncommit: c\n# {}\ntasks: [{{name: a}}]\n",
        "x".repeat(2 << 20)
    );
    invalid(
        c.runs.submit(v1::SubmitRequest { document: big }).await,
        Code::InvalidArgument,
        "document: ",
    );
    // Beyond the 4 MiB message limit the transport refuses it.
    let channel = tonic::transport::Endpoint::from_shared(api.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut unbounded =
        v1::runs_client::RunsClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let huge = "x".repeat(5 << 20);
    let e = unbounded
        .submit(v1::SubmitRequest { document: huge })
        .await
        .unwrap_err();
    // tonic answers OUT_OF_RANGE for a message beyond the decoding limit.
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{e:?}");
    let mut tasks = String::from("repo: r\ncommit: c\ntasks:\n");
    for i in 0..5001 {
        tasks.push_str(&format!("  - {{name: t{i}, command: 'true'}}\n"));
    }
    invalid(
        c.runs.submit(v1::SubmitRequest { document: tasks }).await,
        Code::InvalidArgument,
        "tasks: 5001 tasks exceed",
    );
    // Garbage on the wire: a document that is not UTF-8.
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let e = raw
        .unary::<RawSubmit, v1::SubmitResponse, _>(
            tonic::Request::new(RawSubmit {
                document: vec![0xff, 0xfe, b'r', 0x80],
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/stagetime.v1.Runs/Submit"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "the client's mistake: {e:?}"
    );
    assert!(e.message().contains("not UTF-8"), "{e:?}");

    // 5,000 bad task names: the trailer stays small, the problems travel
    // (bounded) as BadRequest details, and the count is told.
    let mut bad = String::from("repo: r\ncommit: c\ntasks:\n");
    for i in 0..5000 {
        bad.push_str(&format!("  - {{name: Bad_{i}, command: 'true'}}\n"));
    }
    std::fs::write(d.join("bad-names.yaml"), &bad).unwrap();
    let out = cli(d, &api, &["submit", "bad-names.yaml"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("tasks[40].name"),
        "the details are printed: {printed}"
    );
    assert!(printed.contains("4990 more problems"), "{printed}");
    assert!(!printed.contains("h2 protocol"), "{printed}");
    let e = c
        .runs
        .submit(v1::SubmitRequest { document: bad })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 8 << 10, "{} bytes", e.message().len());
    assert!(e.message().contains("5000 problems"), "{}", e.message());
    assert!(
        e.message().contains("4990 more problems"),
        "{}",
        e.message()
    );
    use tonic_types::StatusExt;
    let details = e.get_details_bad_request().expect("BadRequest details");
    let n = details.field_violations.len();
    assert!((40..=100).contains(&n), "{n} problems in the details");
    assert_eq!(details.field_violations[0].field, "tasks[0].name");

    // Get, Watch, Cancel, Rerun: missing, malformed and unknown ids.
    for (id, code, needle) in [
        ("", Code::InvalidArgument, "id: required"),
        ("Not An Id", Code::InvalidArgument, "id: "),
        (&"a".repeat(300) as &str, Code::InvalidArgument, "id: "),
        ("unknown-run", Code::NotFound, "not found"),
    ] {
        let id = id.to_string();
        invalid(
            c.runs.get(v1::GetRequest { id: id.clone() }).await,
            code,
            needle,
        );
        invalid(
            c.runs.watch(v1::WatchRequest { id: id.clone() }).await,
            code,
            needle,
        );
        invalid(
            c.runs.cancel(v1::CancelRequest { id: id.clone() }).await,
            code,
            needle,
        );
        invalid(
            c.runs
                .rerun(v1::RerunRequest {
                    id,
                    expected_version: 0,
                    tasks: vec![],
                })
                .await,
            code,
            needle,
        );
    }

    // List.
    invalid(
        c.runs
            .list(v1::ListRequest {
                page_size: 5000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    invalid(
        c.runs
            .list(v1::ListRequest {
                states: vec![1, 99],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "states[1]",
    );
    invalid(
        c.runs
            .list(v1::ListRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    invalid(
        c.runs
            .list(v1::ListRequest {
                repo: "r".repeat(1000),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "repo",
    );

    // Legacy CreateRevisionRun: ERROR answers naming the field.
    let good = legacy_request();
    let cases: Vec<(legacy::CreateRevisionRunRequest, &str)> = vec![
        (
            legacy::CreateRevisionRunRequest {
                repo_name: String::new(),
                ..good.clone()
            },
            "repo_name",
        ),
        (
            legacy::CreateRevisionRunRequest {
                commit_id: String::new(),
                ..good.clone()
            },
            "commit_id",
        ),
        (
            legacy::CreateRevisionRunRequest {
                pipelineruns: vec![],
                ..good.clone()
            },
            "pipelineruns",
        ),
        {
            let mut r = good.clone();
            r.pipelineruns[0].stage = 1.5;
            (r, "pipelineruns[0].stage")
        },
        {
            let mut r = good.clone();
            r.pipelineruns[1].stage = f64::NAN;
            (r, "pipelineruns[1].stage")
        },
        {
            let mut r = good.clone();
            r.pipelineruns[0].params = "novalue".into();
            (r, "pipelineruns[0].params")
        },
        {
            let mut r = good.clone();
            r.pipelineruns[1].name = "Not Valid".into();
            (r, "pipelineruns[1].name")
        },
        {
            let mut r = good.clone();
            r.pipelineruns = vec![r.pipelineruns[0].clone(); 5001];
            (r, "pipelineruns")
        },
    ];
    for (request, needle) in cases {
        let r = c
            .create
            .create_revision_run(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.result(),
            legacy::response::Result::Error,
            "{needle}: {r:?}"
        );
        let e = r.error.unwrap();
        assert!(
            e.message.contains(needle),
            "{needle:?} not in {:?}",
            e.message
        );
        let errors: serde_json::Value = serde_json::from_slice(&e.errors).unwrap();
        assert!(errors.as_array().is_some_and(|a| !a.is_empty()), "{errors}");
    }

    // Legacy GetStatus.
    invalid(
        c.statuses
            .get_status(legacy::StatusGetRequest {
                revision_run_id: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "revision_run_id",
    );
    invalid(
        c.statuses
            .get_status(legacy::StatusGetRequest {
                revision_run_id: "nothing-like-this".into(),
            })
            .await,
        Code::NotFound,
        "revision_run_id",
    );

    // Nothing was stored.
    let listed = c
        .runs
        .list(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runs.is_empty(), "{listed:?}");
}

#[test]
fn tls_serves_https_clients_that_trust_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !support::redis::certs::make_test_certs(d) {
        stagetime_core::testkit::skip_or_fail("openssl (to make test certificates)");
        return;
    }
    let cert = d.join("server.pem");
    let key = d.join("server.key");
    let (_server, addr, _) = server_at(
        d,
        &[
            "--memory",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let https = format!("https://{addr}");
    let ca = d.join("ca.pem");
    let out = cli(
        d,
        &https,
        &["list", "--ca-cert", ca.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Without trusting the CA, or in plaintext, the client cannot talk to it.
    let out = cli(d, &https, &["list"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = cli(d, &format!("http://{addr}"), &["list"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn an_unreachable_server_exits_3_and_a_bad_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = cli(d, &url, &["list"], None);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    std::fs::write(d.join("bad.yaml"), "repo: [unclosed\n").unwrap();
    let out = cli(d, &url, &["submit", "bad.yaml"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cli(d, "ftp://x", &["list"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_reported_by_logs_metrics_and_the_cli() {
    // Redis without persistence: a restart loses every run.
    let Some(redis) = support::redis::dedicated_with(&["--appendonly", "no", "--save", ""]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = redis.url();
    let (server, addr, metrics) = server_at(d, &["--redis-url", &url], &[]);
    let api = format!("http://{addr}");
    assert!(
        server.log().contains("no append-only file"),
        "warned at start: {}",
        server.log()
    );
    std::fs::write(
        d.join("run.yaml"),
        "repo: lost\ncommit: c1\ntasks:\n  - {name: a, command: 'true'}\n",
    )
    .unwrap();
    let out = cli(d, &api, &["submit", "run.yaml", "--output", "json"], None);
    let id = json(&out)["id"].as_str().unwrap().to_string();
    // The server has read the store's epoch once its metrics refreshed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&metrics, "/metrics").contains("stagetime_store_data_lost_total 0") {
        assert!(Instant::now() < deadline, "no metrics refresh");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redis.restart();
    // Noticed on a following refresh: the CLI is told why the run is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let told = loop {
        let out = cli(d, &api, &["status", &id], None);
        let said = text(&out);
        if said.contains("lost its data") {
            assert_eq!(out.status.code(), Some(2), "{said}");
            break said;
        }
        assert!(
            Instant::now() < deadline,
            "never told: {said}\nserver log: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(told.contains("NotFound"), "{told}");
    assert_eq!(
        metric(
            &http_get(&metrics, "/metrics"),
            "stagetime_store_data_lost_total"
        ),
        1.0
    );
    assert!(
        server.log().contains("the store lost its data"),
        "{}",
        server.log()
    );
}

/// Issue 11, defect 7: a token that is set but blank never starts the
/// server open; only an unset token does.
#[test]
fn a_blank_auth_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe("server"))
        .args([
            "--memory",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("STAGETIME_AUTH_TOKEN", "   ")
        .env_remove("STAGETIME_AUTH_TOKEN_FILE")
        .current_dir(dir.path())
        .output()
        .expect("run the server");
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("blank"), "{text}");
    assert!(!text.contains("grpc listening"), "{text}");
}

/// Issue 14, times and views through the server: `status`/`describe` with
/// the times, the queue and every attempt with its reason; `list` with AGE
/// and DURATION; RFC 3339 beside the milliseconds in JSON and YAML;
/// `--last` instead of a copied id; `cancel` of a finished run refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_last_show_times_attempts_and_reasons() {
    let Some(dep) = deployment("times") else {
        return;
    };
    let d = dep.dir.path();
    let api = &dep.api;
    let marker = d.join("marker");
    std::fs::write(
        d.join("flaky.yaml"),
        format!(
            "repo: times\ncommit: t1\ntasks:\n  - {{name: flaky, retries: 1, retry_delay: 1s, command: \"test -f {m} || {{ touch {m}; exit 1; }}\"}}\n  - {{name: after, stage: 1, command: \"true\"}}\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let out = cli(d, api, &["submit", "flaky.yaml", "-w"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let submitted = text(&out);
    let id = submitted
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split_whitespace().next())
        .unwrap()
        .to_string();

    let out = cli(d, api, &["status", "--last"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for needle in [
        format!("run {id} succeeded in "),
        "  submitted  20".into(),
        "  started    20".into(),
        "(queued ".into(),
        "  ended      20".into(),
        "  duration   ".into(),
        "      attempt 1: 20".into(),
        " failed: exited with status 1; log: ".into(),
        "      attempt 2: 20".into(),
        ".log]".into(),
    ] {
        assert!(t.contains(&needle), "missing {needle:?} in\n{t}");
    }
    assert!(!t.contains('\x1b'), "no colours off a terminal: {t}");

    let out = cli(d, api, &["describe", "-l", "-o", "json"], None);
    let v = json(&out);
    assert_eq!(v["id"], id.as_str());
    let created_ms = v["created_ms"].as_u64().unwrap();
    assert_eq!(v["created"], stagetime::report::rfc3339(created_ms), "{v}");
    let flaky = &v["tasks"][0];
    assert_eq!(flaky["attempts"][0]["status"], "backoff", "{v}");
    assert_eq!(flaky["attempts"][1]["status"], "succeeded", "{v}");
    assert!(flaky["attempts"][1]["finished"].is_string(), "{v}");

    let out = cli(d, api, &["list"], None);
    let t = text(&out);
    let header = t.lines().next().unwrap();
    assert!(
        header.contains(" AGE ") && header.ends_with("DURATION"),
        "{t}"
    );
    assert!(t.lines().any(|l| l.starts_with(&id)), "{t}");
    let out = cli(d, api, &["list", "-o", "yaml"], None);
    assert!(text(&out).contains("  created: 20"), "{}", text(&out));

    let out = cli(d, api, &["cancel", "--last"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "run {id} already finished (succeeded): nothing to cancel"
        )),
        "{}",
        text(&out)
    );
    let out = cli(d, api, &["watch", "--last"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A rerun of the newest run: nothing failed, so it succeeds again.
    let out = cli(d, api, &["rerun", "--last", "-w"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("rerun of run {id} requested")),
        "{}",
        text(&out)
    );
}

/// Issue 14: `submit --wait` waited forever at 0/6 with no hint that no
/// worker was alive, and Ctrl-C detached silently. A server with `--memory`
/// (no workers can see its runs) says so at start; `watch` says when the
/// run stays queued, and Ctrl-C says it only detached and exits 130.
#[test]
fn watch_says_no_worker_started_the_run_and_ctrl_c_only_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, api) = server(d, &["--memory"], &[]);
    assert!(
        server.log().contains("NO WORKER CAN SEE THEM"),
        "{}",
        server.log()
    );
    std::fs::write(
        d.join("r.yaml"),
        "repo: lonely\ncommit: c1\ntasks:\n  - {name: a, command: \"true\"}\n",
    )
    .unwrap();
    let out = cli(d, &api, &["submit", "r.yaml", "-o", "json"], None);
    let id = json(&out)["id"].as_str().unwrap().to_string();

    let stderr = d.join("watch.stderr");
    let child = Command::new(exe("stagetime"))
        .args(["watch", &id, "--warn-queued-after", "1s"])
        .env("STAGETIME_SERVER", &api)
        .env_remove("STAGETIME_AUTH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&stderr)
        .unwrap()
        .contains("no worker has started it")
    {
        assert!(Instant::now() < deadline, "no queue hint");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!("detached from run {id}: it goes on")),
        "{err}"
    );
    let out = cli(d, &api, &["status", &id], None);
    assert!(
        text(&out).contains("not yet: queued for"),
        "the run is still queued: {}",
        text(&out)
    );
}

/// Issue 14: the worker's repository → namespace mapping is read strictly:
/// a bad entry stops it before it connects anywhere, naming the entry.
#[test]
fn a_bad_repo_namespace_mapping_stops_the_worker_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe("worker"))
        .args([
            "--redis-url",
            "redis://127.0.0.1:1",
            "--backend",
            "tekton",
            "--repo-namespaces",
            "web=team-web,api=Team_API",
        ])
        .current_dir(dir.path())
        .env_remove("STAGETIME_REPO_NAMESPACES")
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("--repo-namespaces")
            && t.contains("repo_namespaces[1]")
            && t.contains("\"Team_API\" is not a namespace name"),
        "{t}"
    );
}

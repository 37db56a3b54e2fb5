//! Test harness: the Kubernetes-API emulator (kmock-based, Python) started on
//! a free loopback port, kube clients for it, and a simulated Tekton
//! controller that moves PipelineRuns to their end.
//!
//! The emulator runs from a venv: `$STAGETIME_KMOCK_VENV`, default
//! `<workspace>/target/kmock-venv`. When the venv is missing the harness runs
//! `tests/emulator/setup.sh` to create it (pip, pinned versions). When that is
//! impossible (no python, no package index) the tests print a loud SKIPPED
//! line — or fail when `STAGETIME_REQUIRE_SERVERS=1`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;
use stagetime_core::testkit::{servers_required, skip_or_fail, unique};
use stagetime_kube::types::{ParamValue, PipelineRun};
use stagetime_kube::{RateLimit, RetryPolicy, TektonConfig};
use tokio::task::JoinHandle;

pub mod operator;
pub mod rbac;
/// The redis-server harness of stagetime-redis's tests (the operator and the
/// workers share runs through Redis in production).
#[path = "../../../stagetime-redis/tests/support/mod.rs"]
pub mod redis;

/// A running emulator process (shared by every test of one test binary; it
/// exits when the test process does, because its stdin closes).
pub struct Emulator {
    child: Mutex<Child>,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv() -> PathBuf {
    std::env::var_os("STAGETIME_KMOCK_VENV").map_or_else(
        || workspace().join("target").join("kmock-venv"),
        PathBuf::from,
    )
}

fn emulator_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("emulator")
}

fn setup_venv() -> Result<PathBuf, String> {
    let python = venv().join("bin").join("python");
    let out = Command::new("bash")
        .arg(emulator_dir().join("setup.sh"))
        .env("STAGETIME_KMOCK_VENV", venv())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run setup.sh: {e}"))?;
    if !out.status.success() || !python.exists() {
        return Err(format!(
            "tests/emulator/setup.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(python)
}

fn start() -> Result<Emulator, String> {
    let python = setup_venv()?;
    let mut child = Command::new(&python)
        .arg(emulator_dir().join("kube_emulator.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the emulator with {}: {e}", python.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the emulator never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) if line.starts_with("LISTENING ") => Ok(Emulator {
            url: line["LISTENING ".len()..].trim().to_string(),
            child: Mutex::new(child),
        }),
        other => {
            let _ = child.kill();
            Err(format!("the emulator did not start: {other:?}"))
        }
    }
}

/// The shared emulator, started on first use; `None` (after a loud SKIPPED
/// line) when it cannot run. Panics instead when `STAGETIME_REQUIRE_SERVERS=1`.
pub fn emulator() -> Option<&'static Emulator> {
    static EMU: OnceLock<Result<Emulator, String>> = OnceLock::new();
    match EMU.get_or_init(start) {
        Ok(e) => Some(e),
        Err(why) => {
            if servers_required() {
                panic!(
                    "the Kubernetes-API emulator is required (STAGETIME_REQUIRE_SERVERS=1) but did not start: {why}"
                );
            }
            let what = format!(
                "the Kubernetes-API emulator (kmock venv; run stagetime-kube/tests/emulator/setup.sh) — {why}"
            );
            skip_or_fail(&what);
            // Also straight to the process's stderr: libtest captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED (stagetime-kube): {what} ***\n"
            );
            None
        }
    }
}

impl Emulator {
    /// A kube client for this emulator (create one per Tokio runtime).
    pub fn client(&self, namespace: &str) -> Client {
        let mut cfg = kube::Config::new(self.url.parse().expect("emulator url"));
        cfg.default_namespace = namespace.to_string();
        cfg.read_timeout = Some(Duration::from_secs(60));
        Client::try_from(cfg).expect("client for the emulator")
    }

    /// A kube client that marks its requests with `X-Stagetime-Actor: actor`
    /// (the emulator's request log records it; see [`rbac`]).
    pub fn client_as(&self, namespace: &str, actor: &str) -> Client {
        let mut cfg = kube::Config::new(self.url.parse().expect("emulator url"));
        cfg.default_namespace = namespace.to_string();
        cfg.read_timeout = Some(Duration::from_secs(60));
        cfg.headers.push((
            http::HeaderName::from_static("x-stagetime-actor"),
            http::HeaderValue::from_str(actor).expect("actor header"),
        ));
        Client::try_from(cfg).expect("client for the emulator")
    }

    /// Every API request the emulator has seen (method, path, query, contentType, actor, body).
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        self.control("GET", "requests").await
    }

    /// The recorded requests to paths of namespace `ns`.
    pub async fn requests_in(&self, ns: &str) -> Vec<serde_json::Value> {
        let prefix = format!("/namespaces/{ns}/");
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(&prefix)))
            .collect()
    }

    /// Appends `text` to the log of `container` of pod `pod` in `ns` (served
    /// by `GET .../pods/POD/log`).
    pub async fn append_pod_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        let client = self.client("default");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "/_emulator/pod-log?namespace={ns}&pod={pod}&container={container}"
            ))
            .body(text.as_bytes().to_vec())
            .expect("request");
        let _: serde_json::Value = client.request(req).await.expect("emulator control call");
    }

    /// Forgets the watch history and closes every watch: resuming watches get 410 and re-list.
    pub async fn expire(&self) {
        let _: serde_json::Value = self.control("POST", "expire").await;
    }

    async fn control<T: serde::de::DeserializeOwned>(&self, method: &str, what: &str) -> T {
        let client = self.client("default");
        let req = http::Request::builder()
            .method(method)
            .uri(format!("/_emulator/{what}"))
            .body(Vec::new())
            .expect("request");
        client
            .request::<T>(req)
            .await
            .expect("emulator control call")
    }
}

/// A backend configuration for tests: namespace `ns`, fast retries.
pub fn config(ns: &str) -> TektonConfig {
    TektonConfig {
        rate_limit: Some(RateLimit {
            per_second: 200.0,
            burst: 100,
        }),
        retry: RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..TektonConfig::new(ns)
    }
}

/// A fresh namespace name (tests sharing the emulator never see each other's objects).
pub fn namespace() -> String {
    unique("ns")
}

/// A simulated Tekton controller for one namespace. It watches PipelineRuns
/// and ends them as their `outcome` param says:
///
/// * `succeed` (default) / `fail` / `timeout`: after `delay_ms` (default 50) set
///   `Succeeded` to True / False `Failed` / False `PipelineRunTimeout`;
/// * `flaky`: attempt 1 fails, later attempts succeed;
/// * `hang`: stays running (`Unknown`) until cancelled.
///
/// A PipelineRun whose `spec.status` asks for cancellation ends `False` with
/// that reason (`Cancelled`, `CancelledRunFinally`, `StoppedRunFinally`).
/// Status changes go through the `status` subresource with merge patches.
pub struct Controller {
    task: JoinHandle<()>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Controller {
    /// Starts the controller for `ns` in the current runtime.
    pub fn start(client: Client, ns: &str) -> Controller {
        let api: Api<PipelineRun> = Api::namespaced(client, ns);
        Controller {
            task: tokio::spawn(control_loop(api)),
        }
    }
}

fn param(pr: &PipelineRun, name: &str) -> Option<String> {
    pr.spec
        .params
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| match &p.value {
            ParamValue::String(s) => Some(s.clone()),
            _ => None,
        })
}

fn condition(status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"status": {"conditions": [{"type": "Succeeded", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2024-01-13T13:40:36Z"}],
           "completionTime": if status == "Unknown" { serde_json::Value::Null } else { json!("2024-01-13T13:40:36Z") }}})
}

async fn set_status(api: &Api<PipelineRun>, name: &str, status: serde_json::Value) {
    // Do not overwrite an end that was already written (e.g. cancelled meanwhile).
    if let Ok(Some(cur)) = api.get_opt(name).await
        && stagetime_kube::status::is_finished(&cur)
    {
        return;
    }
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::debug!(%name, error = %e, "simulated controller: status patch failed");
    }
}

async fn control_loop(api: Api<PipelineRun>) {
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut events = watcher::watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = match events.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "simulated controller: watch error");
                continue;
            }
        };
        let pr = match ev {
            Event::Apply(pr) | Event::InitApply(pr) => pr,
            _ => continue,
        };
        if stagetime_kube::status::is_finished(&pr) {
            continue;
        }
        let name = pr.name_any();
        if let Some(reason) = pr
            .spec
            .status
            .clone()
            .filter(|s| s.contains("Cancelled") || s.contains("Stopped"))
        {
            let api = api.clone();
            tokio::spawn(async move {
                set_status(
                    &api,
                    &name,
                    condition("False", &reason, "PipelineRun was cancelled"),
                )
                .await;
            });
            continue;
        }
        if !started.lock().unwrap().insert(name.clone()) {
            continue;
        }
        let outcome = param(&pr, "outcome").unwrap_or_else(|| "succeed".into());
        let delay = param(&pr, "delay_ms")
            .and_then(|d| d.parse().ok())
            .unwrap_or(50u64);
        let attempt: u32 = pr
            .labels()
            .get("stagetime/attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        let api = api.clone();
        tokio::spawn(async move {
            set_status(
                &api,
                &name,
                condition(
                    "Unknown",
                    "Running",
                    "Tasks Completed: 0 (Failed: 0, Cancelled 0), Incomplete: 1",
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let end = match (outcome.as_str(), attempt) {
                ("hang", _) => return,
                ("fail", _) | ("flaky", 1) => condition(
                    "False",
                    "Failed",
                    "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0",
                ),
                ("timeout", _) => condition(
                    "False",
                    "PipelineRunTimeout",
                    &format!("PipelineRun \"{name}\" failed to finish within \"30m0s\""),
                ),
                _ => condition(
                    "True",
                    "Succeeded",
                    "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 0",
                ),
            };
            set_status(&api, &name, end).await;
        });
    }
}

/// Pipeline params that make the simulated controller end a run as asked.
pub fn outcome_params(outcome: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("outcome".to_string(), outcome.to_string())])
}

//! End to end with real processes: the `operator` and `worker` examples
//! (Tekton backend) against the Kubernetes-API emulator of stagetime-kube
//! (through a kubeconfig file, as in a cluster) and a real redis-server.
//! The test plays kubectl (plain HTTP) and a minimal Tekton controller: a
//! RevisionRun ends Succeeded, the operator's metrics and probes answer,
//! deleting a RevisionRun goes through the operator's finalizer, and SIGTERM
//! stops both processes cleanly.
#![cfg(all(feature = "kube", feature = "redis", feature = "telemetry"))]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Proc, examples, http_get};

const GROUP: &str = "/apis/stagetime.sthings.tiab.ssc.sva.de/v1beta1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example `name`; the two examples are built together, once.
fn exe(name: &str) -> PathBuf {
    examples(&["operator", "worker"]).join(name)
}

/// The emulator process (stdin held open: it exits with the test process).
struct Emulator {
    child: Child,
    addr: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn emulator() -> Option<Emulator> {
    let dir = root().join("stagetime-kube").join("tests").join("emulator");
    let venv = std::env::var_os("STAGETIME_KMOCK_VENV")
        .map_or_else(|| root().join("target").join("kmock-venv"), PathBuf::from);
    let setup = Command::new("bash")
        .arg(dir.join("setup.sh"))
        .env("STAGETIME_KMOCK_VENV", &venv)
        .stdin(Stdio::null())
        .output();
    let python = venv.join("bin").join("python");
    let why = match setup {
        Ok(o) if o.status.success() && python.exists() => None,
        Ok(o) => Some(format!(
            "setup.sh failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run setup.sh: {e}")),
    };
    if let Some(why) = why {
        stagetime_core::testkit::skip_or_fail(&format!(
            "the Kubernetes-API emulator (kmock venv) — {why}"
        ));
        return None;
    }
    let mut child = Command::new(python)
        .arg(dir.join("kube_emulator.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the emulator's first line");
    let url = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("the emulator did not start: {line:?}"));
    Some(Emulator {
        addr: url.trim_start_matches("http://").to_string(),
        child,
    })
}

/// One plain HTTP/1.1 request; (status code, JSON body or Null).
fn http(addr: &str, method: &str, path: &str, ctype: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn create(addr: &str, ns: &str, plural: &str, obj: Value) {
    let (code, body) = http(
        addr,
        "POST",
        &format!("{GROUP}/namespaces/{ns}/{plural}"),
        "application/json",
        Some(&obj),
    );
    assert_eq!(code, 201, "create {plural}: {body}");
}

/// A minimal Tekton: every PipelineRun of `ns` without a status succeeds.
fn tekton(addr: String, ns: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let list = format!("/apis/tekton.dev/v1/namespaces/{ns}/pipelineruns");
        while !stop.load(Ordering::Relaxed) {
            let (_, prs) = http(&addr, "GET", &list, "application/json", None);
            for pr in prs["items"].as_array().into_iter().flatten() {
                if pr.get("status").is_some_and(|s| !s.is_null()) {
                    continue;
                }
                let name = pr["metadata"]["name"].as_str().unwrap_or("");
                let status = json!({"status": {"conditions": [{"type": "Succeeded", "status": "True",
                    "reason": "Succeeded", "message": "Tasks Completed: 1", "lastTransitionTime": "2024-01-13T13:40:36Z"}],
                    "completionTime": "2024-01-13T13:40:36Z"}});
                http(
                    &addr,
                    "PATCH",
                    &format!("{list}/{name}/status"),
                    "application/merge-patch+json",
                    Some(&status),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operator_and_worker_binaries_run_a_revision_run() {
    let Some(redis) = support::redis::shared() else {
        return;
    };
    let Some(emu) = emulator() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster: {{server: \"http://{}\"}}\n\
             contexts:\n- name: emu\n  context: {{cluster: emu, user: emu}}\ncurrent-context: emu\n\
             users:\n- name: emu\n  user: {{}}\n",
            emu.addr
        ),
    )
    .expect("kubeconfig");
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let ns = stagetime_core::testkit::unique("ops");
    let redis_url = redis.url();
    let env = [
        ("KUBECONFIG", kubeconfig.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("STAGETIME_REDIS_PREFIX", ns.as_str()),
    ];
    let mut operator = Proc::start(
        &exe("operator"),
        &[
            "--namespace",
            &ns,
            "--metrics-listen",
            "127.0.0.1:0",
            "--poll-interval",
            "200ms",
        ],
        &env,
        dir.path(),
    );
    let metrics = operator.wait_line("metrics listening on ");
    operator.wait_line("operator started");
    let mut worker = Proc::start(
        &exe("worker"),
        &[
            "--backend",
            "tekton",
            "--namespace",
            &ns,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &env,
        dir.path(),
    );
    worker.wait_line("worker ");
    let stop = Arc::new(AtomicBool::new(false));
    let tekton = tekton(emu.addr.clone(), ns.clone(), Arc::clone(&stop));

    create(
        &emu.addr,
        &ns,
        "repos",
        json!({"apiVersion": "stagetime.sthings.tiab.ssc.sva.de/v1beta1", "kind": "Repo",
               "metadata": {"name": "app"}, "spec": {"name": "app", "organization": "org", "branch": "main"}}),
    );
    for (name, stage) in [("test", 0), ("image", 1)] {
        create(
            &emu.addr,
            &ns,
            "pipelineruntemplates",
            json!({"apiVersion": "stagetime.sthings.tiab.ssc.sva.de/v1beta1", "kind": "PipelineRunTemplate",
                   "metadata": {"name": name},
                   "spec": {"stage": stage, "resolver": ["url=https://git.example.com/p.git", format!("pathInRepo={name}.yaml")],
                            "params": ["a=1"]}}),
        );
    }
    create(
        &emu.addr,
        &ns,
        "revisionruns",
        json!({"apiVersion": "stagetime.sthings.tiab.ssc.sva.de/v1beta1", "kind": "RevisionRun",
               "metadata": {"name": "demo"},
               "spec": {"repository": "app", "revision": "4f1c2e9a77",
                        "technologies": [{"id": "unit", "kind": "test"}, {"id": "build", "kind": "image", "params": "a=2;"}]}}),
    );
    let rr_path = format!("{GROUP}/namespaces/{ns}/revisionruns/demo");
    let rr = eventually("the RevisionRun to succeed", || {
        let (_, rr) = http(&emu.addr, "GET", &rr_path, "application/json", None);
        (rr["status"]["phase"] == "Succeeded").then_some(rr)
    });
    let conditions: Vec<(String, String)> = rr["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready".to_string(), "Submitted".to_string()),
            ("Succeeded".to_string(), "Succeeded".to_string())
        ]
    );
    assert_eq!(rr["status"]["tasks"].as_array().map(Vec::len), Some(2));

    // Probes and metrics of the operator.
    let (code, _) = http(&metrics, "GET", "/readyz", "text/plain", None);
    assert_eq!(code, 200, "ready");
    let text = http_get(&metrics, "/metrics");
    assert!(
        text.contains("stagetime_operator_runs_submitted_total 1"),
        "{text}"
    );
    assert!(
        text.contains("stagetime_operator_reconciles_total{result=\"updated\"}"),
        "{text}"
    );

    // Deleting goes through the operator's finalizer.
    let (code, _) = http(&emu.addr, "DELETE", &rr_path, "application/json", None);
    assert_eq!(code, 200);
    eventually("the RevisionRun to be gone", || {
        let (code, _) = http(&emu.addr, "GET", &rr_path, "application/json", None);
        (code == 404).then_some(())
    });

    stop.store(true, Ordering::Relaxed);
    tekton.join().expect("tekton thread");
    assert_eq!(
        operator.terminate(),
        Some(0),
        "operator: {}",
        operator.log()
    );
    assert_eq!(worker.terminate(), Some(0), "worker: {}", worker.log());
}

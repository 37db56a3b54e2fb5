//! The README's "Server, workers and client" section, run as written
//! (issue 14: following it literally, the worker died with "Address already
//! in use" and `submit --wait` waited forever).
//!
//! Each line of the section's `sh` block is run by `sh` as it stands, with
//! three substitutions only:
//! - `cargo run --example NAME --` is the example binary cargo built for
//!   this test (what `cargo run` would run);
//! - `redis-server --port 6379 ...` is not run: this machine is shared by
//!   concurrent test runs, so the test harness's redis-server, on a free
//!   port, stands in for it, and `127.0.0.1:6379` in the other lines names
//!   that port;
//! - `ID` is the id `submit` printed.
//!
//! Everything else — the default gRPC port (50051), the server's and the
//! worker's default metrics ports (9090, 9091), the default key prefix —
//! is the README's. Lines ending in `&` run in the background; the test
//! waits for each to say it is ready. The commands run in a directory of
//! their own, where `examples/` is the repository's.
#![cfg(all(feature = "grpc", feature = "redis", feature = "kube"))]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Proc, examples, text};

/// The lines of the first `sh` block after the heading `heading` in the
/// README (continuation lines joined).
fn readme_block(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no {heading:?}"))
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("no sh block under {heading:?}"))
        .0;
    block
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `line` with the substitutions of the module's doc.
fn substitute(line: &str, bin: &Path, redis_port: u16, id: Option<&str>) -> String {
    let mut line = line.replace("127.0.0.1:6379", &format!("127.0.0.1:{redis_port}"));
    for name in ["stagetime", "server", "worker"] {
        line = line.replace(
            &format!("cargo run --example {name} --"),
            &bin.join(name).display().to_string(),
        );
    }
    if let Some(id) = id {
        line = line
            .split(' ')
            .map(|w| if w == "ID" { id } else { w })
            .collect::<Vec<_>>()
            .join(" ");
    }
    line
}

#[test]
fn the_readme_server_workers_and_client_section_works_as_written() {
    let lines = readme_block("## Server, workers and client");
    assert!(
        lines[0].starts_with("redis-server --port 6379"),
        "the section starts Redis on 6379: {lines:?}"
    );
    let Some(redis) = support::redis::shared() else {
        stagetime_core::testkit::skip_or_fail("redis-server (REDIS_SERVER or PATH)");
        return;
    };
    let bin: PathBuf = examples(&["stagetime", "server", "worker"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        d.join("examples"),
    )
    .unwrap();

    let mut background: Vec<Proc> = Vec::new();
    let mut id: Option<String> = None;
    let mut ran = Vec::new();
    for line in &lines[1..] {
        let command = substitute(line, &bin, redis.port(), id.as_deref());
        if let Some(command) = command.strip_suffix('&') {
            let mut p = Proc::start(
                Path::new("sh"),
                &["-c", &format!("exec {}", command.trim())],
                &[],
                d,
            );
            // Ready when it says so (and it fails the test if it exits first,
            // e.g. "Address already in use").
            if line.contains("--example server") {
                p.wait_line("metrics listening on ");
            } else if line.contains("--example worker") {
                p.wait_line("worker ");
            }
            background.push(p);
            continue;
        }
        let out = Command::new("sh")
            .args(["-c", &command])
            .current_dir(d)
            .env_remove("STAGETIME_SERVER")
            .env_remove("STAGETIME_AUTH_TOKEN")
            .output()
            .unwrap();
        let t = text(&out);
        let logs: Vec<String> = background.iter().map(Proc::log).collect();
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{line}` failed:\n{t}\nbackground logs: {logs:#?}"
        );
        if id.is_none() {
            id = t
                .lines()
                .find_map(|l| l.strip_prefix("run ")?.split_whitespace().next())
                .map(|s| s.trim_end_matches(':').to_string());
        }
        ran.push((line.clone(), t));
    }
    let id = id.expect("submit printed the run id");
    let summary = &ran[0].1;
    assert!(
        summary.contains(&format!("run {id} succeeded in ")),
        "{summary}"
    );
    assert!(ran[1].1.contains(&id), "list shows the run: {}", ran[1].1);
    let status: serde_json::Value =
        serde_json::from_str(&ran[2].1).unwrap_or_else(|e| panic!("{e}: {}", ran[2].1));
    assert_eq!(status["state"], "succeeded", "{status}");
    // The server's and the worker's metrics each on their default port.
    assert!(
        support::http_get("127.0.0.1:9090", "/metrics").contains("stagetime_grpc_requests_total")
    );
    assert!(
        support::http_get("127.0.0.1:9091", "/metrics").contains("stagetime_transitions_total")
    );
}

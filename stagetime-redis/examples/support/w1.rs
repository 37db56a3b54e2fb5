//! Workload W1 of the load generators (`loadgen` here and the root
//! package's `loadgen_server`, which includes this file with `#[path]`):
//! revision runs of 4 stages × 5 instant tasks, on a throwaway
//! `redis-server` of their own when none is given.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stagetime_core::spec::RevisionRunSpec;
use stagetime_core::testkit::{command_task, spec_with};

/// Stages of a W1 run.
pub const STAGES: u32 = 4;
/// Tasks in each stage of a W1 run.
pub const TASKS_PER_STAGE: u32 = 5;
/// Tasks of a W1 run.
pub const TASKS_PER_RUN: usize = (STAGES * TASKS_PER_STAGE) as usize;

/// Run `i` of W1: repo `w1`, commit `<tag>-<i>`, tasks `s<stage>-t<n>`
/// running `true`.
pub fn spec(i: usize, tag: &str) -> RevisionRunSpec {
    let tasks = (0..STAGES)
        .flat_map(|s| {
            (0..TASKS_PER_STAGE).map(move |t| command_task(&format!("s{s}-t{t}"), s, "true"))
        })
        .collect();
    RevisionRunSpec {
        repo: "w1".into(),
        ..spec_with(&format!("{tag}-{i:06}"), tasks)
    }
}

/// [`spec`] as a native YAML document (what a client submits).
pub fn document(i: usize, tag: &str) -> String {
    let mut doc = format!("repo: w1\ncommit: {tag}-{i:06}\ntasks:\n");
    for s in 0..STAGES {
        for t in 0..TASKS_PER_STAGE {
            doc.push_str(&format!(
                "  - {{name: s{s}-t{t}, stage: {s}, command: \"true\"}}\n"
            ));
        }
    }
    doc
}

/// A `redis-server` of the load generator's own (from `REDIS_SERVER` or the
/// PATH) on a free loopback port, without persistence; killed on drop.
pub struct OwnRedis {
    child: Child,
    url: String,
}

impl OwnRedis {
    /// Starts it and waits until it accepts connections.
    ///
    /// # Errors
    /// A message when it cannot start or does not listen within 10 s.
    pub fn start() -> Result<OwnRedis, String> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start {binary}: {e} (install redis-server, or pass --url)")
            })?;
        let server = OwnRedis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real `redis-server` on a free loopback port for the operator tests (the
//! operator and the workers share runs through Redis in production).
//!
//! The binary comes from `REDIS_SERVER` or the PATH. When it is missing the
//! tests print a loud SKIPPED line — or fail when `STAGETIME_REQUIRE_SERVERS=1`.
//! One server per test binary, no persistence; a watchdog process kills it
//! when the test process is gone (statics are never dropped).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use stagetime_core::testkit::{servers_required, skip_or_fail};

/// A running redis-server.
pub struct Redis {
    child: Mutex<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REDIS_SERVER") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn start() -> Result<Redis, String> {
    let bin = binary().ok_or("redis-server not found (set REDIS_SERVER or install it)")?;
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ready = false;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                ready = true;
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if ready {
            let script = format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null",
                me = std::process::id(),
                pid = child.id()
            );
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            return Ok(Redis {
                child: Mutex::new(child),
                port,
            });
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    Err("redis-server did not become ready".into())
}

/// The shared server, started on first use; `None` (after a loud SKIPPED
/// line) when it cannot run. Panics instead when `STAGETIME_REQUIRE_SERVERS=1`.
pub fn redis() -> Option<&'static Redis> {
    static SERVER: OnceLock<Result<Redis, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(r) => Some(r),
        Err(why) => {
            if servers_required() {
                panic!("redis-server is required (STAGETIME_REQUIRE_SERVERS=1): {why}");
            }
            skip_or_fail(&format!("redis-server — {why}"));
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED (stagetime-kube operator tests): redis-server — {why} ***\n"
            );
            None
        }
    }
}

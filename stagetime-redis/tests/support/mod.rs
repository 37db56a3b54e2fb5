//! Test harness: a real `redis-server` on a free loopback port.
//!
//! The binary comes from `REDIS_SERVER` or the PATH. When it is missing,
//! tests print `SKIPPED: redis-server not found` and return — unless
//! `STAGETIME_REQUIRE_SERVERS=1`, which makes them fail. One shared server
//! per test binary ([`shared`]); tests use distinct key prefixes. Servers are
//! killed on drop, and a watchdog kills them (and removes their directory)
//! when the test process exits, since statics are never dropped.
#![allow(dead_code)]

pub mod certs;
pub mod durable;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stagetime_redis::{RedisConfig, RedisStore};

/// A redis-server owned by the test process.
pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    extra: Vec<String>,
    child: std::sync::Mutex<Option<Child>>,
    watchdog: std::sync::Mutex<Option<Child>>,
}

fn find_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REDIS_SERVER") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Prints the skip notice (once per test binary, straight to stderr so the
/// test harness's output capture does not swallow it), or panics when
/// servers are required.
pub fn skip(reason: &str) {
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    if stagetime_core::testkit::servers_required() {
        panic!(
            "{reason}, and STAGETIME_REQUIRE_SERVERS=1 requires it (install redis-server or set REDIS_SERVER)"
        );
    }
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n*** SKIPPED: {reason}: the Redis tests of this binary pass without running \
             (set REDIS_SERVER or install redis-server; STAGETIME_REQUIRE_SERVERS=1 makes this fail) ***\n"
        );
    }
}

impl RedisServer {
    /// Starts a server with AOF on, or returns `None` when the binary is missing.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`] with extra server arguments (later ones win).
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("stagetime-redis-test")
            .tempdir()
            .expect("temp dir");
        let server = RedisServer {
            binary,
            dir,
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: std::sync::Mutex::new(None),
            watchdog: std::sync::Mutex::new(None),
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&self) {
        let mut child = None;
        for _ in 0..3 {
            let mut c = Command::new(&self.binary)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--protected-mode",
                    "no",
                ])
                .arg("--dir")
                .arg(self.dir.path())
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            if wait_ready(self.port, Duration::from_secs(10)) {
                child = Some(c);
                break;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let child = child.expect("redis-server did not become ready");
        let pid = child.id();
        *self.child.lock().unwrap() = Some(child);
        // Watchdog: when this test process is gone, kill the server and remove its directory.
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            dir = self.dir.path().display()
        );
        let old = self.watchdog.lock().unwrap().take();
        if let Some(mut w) = old {
            let _ = w.kill();
            let _ = w.wait();
        }
        let w = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the watchdog");
        *self.watchdog.lock().unwrap() = Some(w);
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (AOF lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server at once (SIGKILL: no shutdown save).
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory (AOF replayed).
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }

    /// A plain client connection for inspecting or corrupting data.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// A store config with a unique prefix for one test.
    pub fn config(&self, name: &str) -> RedisConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        RedisConfig::new(self.url()).with_prefix(format!("t{}-{name}-{n}", std::process::id()))
    }

    /// A connected store with a unique prefix.
    pub async fn store(&self, name: &str) -> RedisStore {
        RedisStore::connect(self.config(name))
            .await
            .expect("connect the store")
    }

    /// INFO commandstats: total calls so far.
    pub async fn total_calls(&self) -> u64 {
        let mut con = self.raw().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .expect("INFO");
        commandstats_calls(&info)
    }
}

/// Sums `calls=` over the lines of `INFO commandstats`.
pub fn commandstats_calls(info: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

fn wait_ready(port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(b"PING\r\n").is_ok() {
                let mut buf = [0u8; 64];
                // PONG, or NOAUTH from a server with a password: either way it serves.
                if let Ok(n) = s.read(&mut buf)
                    && (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
                {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut w) = self.watchdog.lock().unwrap().take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The server shared by every test of this binary, or `None` when skipped.
pub fn shared() -> Option<&'static RedisServer> {
    static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
    let s = SERVER.get_or_init(RedisServer::start).as_ref();
    if s.is_none() {
        skip("redis-server not found");
    }
    s
}

/// A server of one's own (to kill or restart), or `None` (after [`skip`]).
pub fn dedicated() -> Option<RedisServer> {
    dedicated_with(&[])
}

/// [`dedicated`] with extra server arguments.
pub fn dedicated_with(extra: &[&str]) -> Option<RedisServer> {
    let s = RedisServer::start_with(extra);
    if s.is_none() {
        skip("redis-server not found");
    }
    s
}

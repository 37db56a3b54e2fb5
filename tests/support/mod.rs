//! Shared by the root package's end-to-end tests (`mod support;`): building
//! the examples, a child process read line by line ([`Proc`]), plain HTTP
//! GETs and the CLI's output, and (feature `redis`) the redis-server harness
//! of stagetime-redis's tests.
#![allow(dead_code)]

#[cfg(feature = "forge")]
pub mod forge;
#[cfg(feature = "redis")]
#[path = "../../stagetime-redis/tests/support/mod.rs"]
pub mod redis;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// Builds the `names` examples (each once per test binary); returns the
/// directory holding them.
pub fn examples(names: &[&str]) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !built.contains(*n))
        .collect();
    if !missing.is_empty() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet"]);
        for name in &missing {
            cmd.args(["--example", name]);
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the examples {missing:?} failed");
        built.extend(missing.iter().map(|n| n.to_string()));
    }
    // target/<profile>/deps/<test>-hash -> target/<profile>/examples
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples")
}

/// The path of the example `name`, built on first use.
pub fn example(name: &str) -> PathBuf {
    examples(&[name]).join(name)
}

/// A child process killed (SIGKILL) when dropped; its stdout lines arrive
/// on a channel, its stderr goes to a file for post-mortems.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    /// Starts `exe` with `args` and `env` (and none of the stagetime
    /// variables of the test's own environment); stderr goes below `dir`.
    pub fn start(exe: &Path, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Proc {
        let name = exe
            .file_name()
            .map_or("proc".into(), |n| n.to_string_lossy());
        let stderr = dir.join(format!(
            "{name}-{}.stderr",
            stagetime_core::testkit::unique("p")
        ));
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_remove("STAGETIME_AUTH_TOKEN")
            .env_remove("STAGETIME_NAMESPACE")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the process");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            stderr,
        }
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "process exited ({status}) before printing {prefix:?}: {}",
                            self.log()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("no {prefix:?} line: {}", self.log())
                }
            }
        }
        panic!("no {prefix:?} line within 60 s: {}", self.log());
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code (SIGKILL after 30 s).
    pub fn terminate(&mut self) -> Option<i32> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.child.id()).expect("pid");
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET path` over plain HTTP/1.1; the whole response (head and body).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// A process's stdout and stderr, for assertions and their messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

//! `LocalBackend`: runs a task's `command` as a child process.
//!
//! Each attempt runs `sh -c <command>` in a working directory of its own
//! (`<root>/<run>/<task>/<attempt>/`), in its own process group, with output
//! to `<root>/<run>/<task>/<attempt>.log` and the outcome recorded in
//! `<attempt>.outcome.json` next to it (so a restarted backend can reconcile).
//! Timeout and cancel kill the whole process group.
//!
//! **Attempts lost with their worker.** The command runs under a small `sh`
//! wrapper that records its exit status in `<attempt>.exit`, and every
//! attempt not yet over is listed in `<root>/.live/` with the process that
//! supervises it (pid and start time) and its process group. Every
//! `LocalBackend` observing a root checks that list every
//! [`ORPHAN_SCAN_EVERY`]: an attempt whose supervising process is gone
//! (killed, crashed) has nobody to enforce its timeout or cancel, or to
//! record its end, so its process group is killed and its end is published —
//! the exit status the wrapper recorded if the command had finished, else
//! [`AttemptOutcome::Lost`], which the scheduler retries as an
//! infrastructure failure. The first backend to record the end wins
//! (`<attempt>.outcome.json` is created atomically, never overwritten), so
//! every observer publishes the same outcome. This needs the workers to
//! share the host and the root directory; a worker on another host cannot
//! see the processes.
//!
//! A run's directory belongs to one *creation* of the run
//! ([`RunMeta::created_ms`](crate::backend::RunMeta::created_ms), recorded in
//! `<root>/<run>/run.json`). The same run resumed — by a restarted process
//! with a durable store — finds its attempts and reuses their outcomes; a run
//! created again with the same id (the same content submitted by a new
//! process with a memory store, or after a purge) finds a directory of an
//! earlier creation, which is deleted before its first launch, so nothing of
//! the earlier run is reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::backend::{
    Backend, Capabilities, Housekeeping, HousekeepingReport, LaunchKey, LaunchRequest, Launched,
    Observation, Observers,
};
use crate::error::{Error, Result};
use crate::scheduler::AttemptOutcome;
use crate::store::RunId;

/// How often a `LocalBackend` that is observed looks for attempts whose
/// supervising process died (see the module documentation).
pub const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(1);

/// The directory under the root listing attempts not yet over.
const LIVE_DIR: &str = ".live";

#[derive(Default)]
struct Shared {
    /// Attempts launched by this instance; a present key is never launched again.
    attempts: HashMap<LaunchKey, Option<oneshot::Sender<()>>>,
    /// The creation of each run whose directory this instance has checked.
    creations: HashMap<RunId, u64>,
    observers: Observers,
    /// The scan for attempts of dead processes runs.
    scanning: bool,
}

/// A process, told apart from a later one with the same pid by its start
/// time (clock ticks after boot, from `/proc/<pid>/stat`; `None` where
/// there is no `/proc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ProcessId {
    pid: i32,
    start: Option<u64>,
}

impl ProcessId {
    fn current() -> Self {
        let pid = std::process::id() as i32;
        ProcessId {
            pid,
            start: proc_stat(pid).map(|s| s.0),
        }
    }

    /// True while this very process runs (a zombie counts as gone).
    fn is_alive(&self) -> bool {
        if kill(Pid::from_raw(self.pid), None) == Err(Errno::ESRCH) {
            return false;
        }
        if !Path::new("/proc/self/stat").exists() {
            return true; // no /proc: the pid exists, trust it
        }
        match proc_stat(self.pid) {
            Some((start, state)) => {
                !matches!(state, 'Z' | 'X') && self.start.is_none_or(|s| s == start)
            }
            None => false,
        }
    }
}

/// Start time and state of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold anything, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of the line is the 20th after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// `<root>/.live/<run>_<task>_<attempt>.json`: an attempt not yet over and
/// the process supervising it. (`_` is in neither run ids nor task names.)
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LiveAttempt {
    key: LaunchKey,
    /// The run's creation ([`crate::backend::RunMeta::created_ms`]).
    created_ms: u64,
    /// The process that launched and supervises it.
    owner: ProcessId,
    /// Its process group: the wrapper shell leads it.
    group: ProcessId,
}

/// Kills process group `group` unless its id now belongs to another
/// process (a group id is not reused while the group has members).
fn kill_group(group: &ProcessId) {
    let leader = ProcessId {
        pid: group.pid,
        start: None,
    };
    if leader.is_alive() && !group.is_alive() {
        return; // the id leads another, newer process
    }
    let _ = killpg(Pid::from_raw(group.pid), Signal::SIGKILL);
}

/// Writes `value` to `path` whole (a reader never sees half of it).
fn write_whole(path: &Path, value: &impl serde::Serialize) -> std::io::Result<PathBuf> {
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, json)?;
    Ok(tmp)
}

/// Records `outcome` as the end of the attempt whose outcome file is `path`
/// unless an end is recorded already, and returns the recorded end. The
/// file is created whole and never replaced, so that every backend that
/// settles the same attempt publishes the same outcome.
fn record_outcome(path: &Path, outcome: AttemptOutcome) -> std::io::Result<AttemptOutcome> {
    let tmp = write_whole(path, &outcome)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(outcome),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read(path)?;
            serde_json::from_slice(&text).map_err(std::io::Error::other)
        }
        Err(e) => Err(e),
    }
}

/// The shell wrapper that runs `$1` and records its exit status in `$2`, so
/// that the status survives the worker. Only shell builtins run between the
/// command's end and the record (no `mv`), to keep the instant in which a
/// killed worker's attempt has finished unrecorded short; a half-written
/// (empty) file reads as no status.
const WRAPPER: &str = r#"sh -c "$1"; s=$?; echo "$s" > "$2"; exit "$s""#;

/// Runs task commands as local child processes.
#[derive(Clone)]
pub struct LocalBackend {
    root: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// What it runs: a task's `command`, never its `pipeline`.
    pub const CAPABILITIES: Capabilities = Capabilities::COMMANDS;

    /// A backend keeping working directories and logs under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            shared: Arc::default(),
        }
    }

    /// The directory holding working directories and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log file of an attempt.
    pub fn log_path(&self, key: &LaunchKey) -> PathBuf {
        self.task_dir(key).join(format!("{}.log", key.attempt))
    }

    fn task_dir(&self, key: &LaunchKey) -> PathBuf {
        self.root.join(key.run.as_str()).join(&key.task)
    }

    fn outcome_path(&self, key: &LaunchKey) -> PathBuf {
        self.task_dir(key)
            .join(format!("{}.outcome.json", key.attempt))
    }

    fn exit_path(&self, key: &LaunchKey) -> PathBuf {
        self.task_dir(key).join(format!("{}.exit", key.attempt))
    }

    fn live_path(root: &Path, key: &LaunchKey) -> PathBuf {
        root.join(LIVE_DIR)
            .join(format!("{}_{}_{}.json", key.run, key.task, key.attempt))
    }

    fn creation_path(&self, run: &RunId) -> PathBuf {
        self.root.join(run.as_str()).join("run.json")
    }

    /// Makes `<root>/<run>` belong to the run's creation `created_ms`: a
    /// directory left by an earlier creation of the same id is deleted (its
    /// outcomes are another run's). Runs under the lock, so that the
    /// check-and-delete happens once per run, before any of its launches.
    /// `created_ms` 0 (unknown) checks nothing.
    fn claim_run_dir(&self, s: &mut Shared, run: &RunId, created_ms: u64) -> Result<()> {
        if created_ms == 0 || s.creations.get(run) == Some(&created_ms) {
            return Ok(());
        }
        let dir = self.root.join(run.as_str());
        let marker = self.creation_path(run);
        let recorded = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice::<RunCreation>(&b).ok());
        let io = |ctx: &str, e| Error::io(format!("{ctx} {}", dir.display()), e);
        if recorded.map(|r| r.created_ms) != Some(created_ms) {
            // Attempts of the earlier creation known here are no longer ours
            // (dropping a running one's cancel sender kills it).
            s.attempts.retain(|k, _| k.run != *run);
            if dir.exists() {
                warn!(run = %run, dir = %dir.display(), "deleting the directory of an earlier run with the same id");
                std::fs::remove_dir_all(&dir).map_err(|e| io("deleting", e))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| io("creating", e))?;
            let json = serde_json::to_vec(&RunCreation { created_ms })
                .map_err(|e| Error::io("encoding run.json", std::io::Error::other(e)))?;
            std::fs::write(&marker, json).map_err(|e| io("writing run.json in", e))?;
        }
        s.creations.insert(run.clone(), created_ms);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(shared: &Mutex<Shared>, observation: Observation) {
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.observers.publish(observation);
    }
}

/// The end of an attempt whose supervising process is gone (`live`: its
/// entry in `.live`, `None` when it died before writing one): the end
/// recorded already, else — after killing what is left of its process
/// group — the exit status its wrapper recorded, else
/// [`AttemptOutcome::Lost`]. Records it (first writer wins) and returns
/// the recorded end.
fn settle_orphan(
    root: &Path,
    key: &LaunchKey,
    live: Option<&LiveAttempt>,
) -> std::io::Result<AttemptOutcome> {
    let dir = root.join(key.run.as_str()).join(&key.task);
    let outcome_path = dir.join(format!("{}.outcome.json", key.attempt));
    if let Ok(text) = std::fs::read(&outcome_path)
        && let Ok(outcome) = serde_json::from_slice::<AttemptOutcome>(&text)
    {
        return Ok(outcome);
    }
    // Nobody enforces its timeout or cancel any more: stop it.
    if let Some(live) = live {
        kill_group(&live.group);
    }
    let log = dir.join(format!("{}.log", key.attempt));
    let exit = std::fs::read_to_string(dir.join(format!("{}.exit", key.attempt)))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let who = match live {
        Some(live) => format!("its worker (pid {}) died", live.owner.pid),
        None => "the worker that launched it died as it started it".to_string(),
    };
    let outcome = match exit {
        Some(0) => AttemptOutcome::Succeeded,
        Some(code) => AttemptOutcome::Failed {
            message: format!(
                "exited with status {code} (recorded by its wrapper: {who}); log: {}",
                log.display()
            ),
        },
        None => AttemptOutcome::Lost {
            message: format!(
                "lost: {who} before it finished; its processes were stopped; log: {}",
                log.display()
            ),
        },
    };
    record_outcome(&outcome_path, outcome)
}

/// Settles every attempt listed in `<root>/.live` whose supervising process
/// is gone, and returns their ends.
fn scan_orphans(root: &Path) -> Vec<Observation> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(LIVE_DIR)) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else {
            continue; // settled and removed meanwhile
        };
        let live = match serde_json::from_slice::<LiveAttempt>(&text) {
            Ok(l) => l,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "removing an unreadable entry of live attempts");
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        if live.owner.is_alive() {
            continue;
        }
        let creation = std::fs::read(root.join(live.key.run.as_str()).join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<RunCreation>(&b).ok())
            .map(|c| c.created_ms);
        if live.created_ms != 0 && creation != Some(live.created_ms) {
            // The run was created again since: this attempt is nobody's.
            kill_group(&live.group);
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match settle_orphan(root, &live.key, Some(&live)) {
            Ok(outcome) => {
                warn!(key = %live.key, owner = live.owner.pid, ?outcome, "settled an attempt whose worker died");
                let _ = std::fs::remove_file(&path);
                found.push(Observation {
                    key: live.key,
                    outcome,
                });
            }
            Err(e) => {
                warn!(key = %live.key, error = %e, "cannot settle an attempt whose worker died")
            }
        }
    }
    found
}

/// Every [`ORPHAN_SCAN_EVERY`], publishes the ends of attempts whose
/// supervising process died, while the backend exists.
async fn scan_loop(shared: Weak<Mutex<Shared>>, root: PathBuf) {
    loop {
        let dir = root.clone();
        let found = tokio::task::spawn_blocking(move || scan_orphans(&dir))
            .await
            .unwrap_or_default();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for observation in found {
            LocalBackend::publish(&shared, observation);
        }
        drop(shared);
        tokio::time::sleep(ORPHAN_SCAN_EVERY).await;
    }
}

/// The contents of `<root>/<run>/run.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunCreation {
    created_ms: u64,
}

/// `STAGETIME_PARAM_<NAME>`: the param name upper-cased, other characters as `_`.
pub fn param_env_name(name: &str) -> String {
    let mut s = String::from("STAGETIME_PARAM_");
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Launched> {
        let key = request.key.clone();
        let log = self.log_path(&key);
        let handle = log.display().to_string();
        let Some(command) = request.task.command.clone() else {
            return Err(Error::Unsupported {
                message: format!("task {:?} has no command for the local backend", key.task),
            });
        };
        let workdir = self.task_dir(&key).join(key.attempt.to_string());
        // An attempt directory means an earlier launch (maybe by an earlier
        // process): never run the same attempt twice.
        let (cancel_tx, cancel_rx) = oneshot::channel();
        {
            let mut s = self.lock();
            self.claim_run_dir(&mut s, &key.run, request.run.created_ms)?;
            if s.attempts.contains_key(&key) {
                return Ok(Launched {
                    handle,
                    created: false,
                });
            }
            if workdir.exists() {
                // Launched by another process: report what it left, so the
                // engine is never left waiting for an attempt nobody watches
                // — unless that process is alive and will report it itself.
                s.attempts.insert(key.clone(), None);
                let live_path = Self::live_path(&self.root, &key);
                let live = std::fs::read(&live_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<LiveAttempt>(&b).ok());
                if live.as_ref().is_some_and(|l| l.owner.is_alive()) {
                    return Ok(Launched {
                        handle,
                        created: false,
                    });
                }
                let outcome = settle_orphan(&self.root, &key, live.as_ref()).unwrap_or_else(|e| {
                    AttemptOutcome::Lost {
                        message: format!("lost: launched by a worker that died, and its end cannot be recorded: {e}; log: {handle}"),
                    }
                });
                let _ = std::fs::remove_file(&live_path);
                let observation = Observation {
                    key: key.clone(),
                    outcome,
                };
                s.observers.publish(observation);
                return Ok(Launched {
                    handle,
                    created: false,
                });
            }
            s.attempts.insert(key.clone(), Some(cancel_tx));
        }
        let io = |ctx: &str, e| Error::io(format!("{ctx} for {key}"), e);
        tokio::fs::create_dir_all(&workdir)
            .await
            .map_err(|e| io("creating the working directory", e))?;
        let log_file = std::fs::File::create(&log).map_err(|e| io("creating the log file", e))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| io("opening the log file", e))?;
        let exit_path = std::path::absolute(self.exit_path(&key))
            .map_err(|e| io("resolving the exit status path", e))?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("stagetime-attempt")
            .arg(&command)
            .arg(&exit_path)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0)
            .env("STAGETIME_RUN_ID", key.run.as_str())
            .env("STAGETIME_TASK", &key.task)
            .env(
                "STAGETIME_STAGE",
                request
                    .stage
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "finally".into()),
            )
            .env("STAGETIME_ATTEMPT", key.attempt.to_string())
            .env("STAGETIME_REPO", &request.run.repo)
            .env("STAGETIME_COMMIT", &request.run.commit);
        if let Some(p) = &request.task.pipeline {
            for (name, value) in &p.params {
                cmd.env(param_env_name(name), value);
            }
            for (name, values) in &p.list_params {
                cmd.env(param_env_name(name), values.join(" "));
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.lock().attempts.remove(&key);
                return Err(Error::Unsupported {
                    message: format!("cannot start `sh -c` for {key}: {e}"),
                });
            }
        };
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        // List it as live, with this process as its supervisor, so that
        // other backends on this root settle it should this process die.
        let live_path = Self::live_path(&self.root, &key);
        if let Some(pg) = pgid {
            let live = LiveAttempt {
                key: key.clone(),
                created_ms: request.run.created_ms,
                owner: ProcessId::current(),
                group: ProcessId {
                    pid: pg.as_raw(),
                    start: proc_stat(pg.as_raw()).map(|s| s.0),
                },
            };
            let listed = std::fs::create_dir_all(self.root.join(LIVE_DIR))
                .and_then(|()| write_whole(&live_path, &live))
                .and_then(|tmp| std::fs::rename(tmp, &live_path));
            if let Err(e) = listed {
                warn!(%key, error = %e, "cannot list the attempt as live: should this worker die, it would be found only by its timeout");
            }
        }
        let shared = Arc::clone(&self.shared);
        let outcome_path = self.outcome_path(&key);
        let timeout = request.timeout;
        let log_text = handle.clone();
        debug!(%key, ?pgid, "launched");
        tokio::spawn(async move {
            let kill = || {
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
            };
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                status = child.wait() => {
                    // Reap anything the command left behind in its group.
                    kill();
                    match status {
                        Ok(s) if s.success() => AttemptOutcome::Succeeded,
                        Ok(s) => AttemptOutcome::Failed {
                            message: match s.code() {
                                Some(code) => format!("exited with status {code}; log: {log_text}"),
                                None => format!("killed by a signal; log: {log_text}"),
                            },
                        },
                        Err(e) => AttemptOutcome::Failed { message: format!("cannot wait for the process: {e}") },
                    }
                }
                _ = sleep => {
                    kill();
                    let _ = child.wait().await;
                    AttemptOutcome::TimedOut {
                        message: format!("timed out after {}; log: {log_text}", humantime::format_duration(timeout.unwrap_or_default())),
                    }
                }
                _ = cancel_rx => {
                    kill();
                    let _ = child.wait().await;
                    AttemptOutcome::Cancelled { message: "cancelled".into() }
                }
            };
            let recorded = {
                let outcome = outcome.clone();
                tokio::task::spawn_blocking(move || {
                    let recorded = record_outcome(&outcome_path, outcome);
                    let _ = std::fs::remove_file(&live_path);
                    recorded
                })
                .await
            };
            let outcome = match recorded {
                Ok(Ok(recorded)) => recorded,
                Ok(Err(e)) => {
                    warn!(%key, error = %e, "cannot record the outcome file");
                    outcome
                }
                Err(e) => {
                    warn!(%key, error = %e, "cannot record the outcome file");
                    outcome
                }
            };
            if let Some(slot) = shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .attempts
                .get_mut(&key)
            {
                *slot = None;
            }
            LocalBackend::publish(&shared, Observation { key, outcome });
        });
        Ok(Launched {
            handle,
            created: true,
        })
    }

    async fn cancel(&self, key: &LaunchKey) -> Result<()> {
        if let Some(slot) = self.lock().attempts.get_mut(key)
            && let Some(tx) = slot.take()
        {
            let _ = tx.send(());
        }
        Ok(())
    }

    fn observe(&self) -> BoxStream<'static, Observation> {
        let mut s = self.lock();
        if !s.scanning
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            s.scanning = true;
            runtime.spawn(scan_loop(Arc::downgrade(&self.shared), self.root.clone()));
        }
        s.observers.subscribe()
    }

    async fn reconcile(&self, run: &RunId) -> Result<Vec<Observation>> {
        let dir = self.root.join(run.as_str());
        let mut found = Vec::new();
        let mut tasks = match tokio::fs::read_dir(&dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        while let Some(task) = tasks
            .next_entry()
            .await
            .map_err(|e| Error::io("listing tasks", e))?
        {
            if !task.file_type().await.is_ok_and(|t| t.is_dir()) {
                continue; // run.json
            }
            let task_name = task.file_name().to_string_lossy().to_string();
            let mut files = tokio::fs::read_dir(task.path())
                .await
                .map_err(|e| Error::io("listing attempts", e))?;
            while let Some(f) = files
                .next_entry()
                .await
                .map_err(|e| Error::io("listing attempts", e))?
            {
                let name = f.file_name().to_string_lossy().to_string();
                let Some(attempt) = name
                    .strip_suffix(".outcome.json")
                    .and_then(|a| a.parse::<u32>().ok())
                else {
                    continue;
                };
                let text = tokio::fs::read(f.path())
                    .await
                    .map_err(|e| Error::io("reading an outcome", e))?;
                match serde_json::from_slice::<AttemptOutcome>(&text) {
                    Ok(outcome) => found.push(Observation {
                        key: LaunchKey {
                            run: run.clone(),
                            task: task_name.clone(),
                            attempt,
                        },
                        outcome,
                    }),
                    Err(e) => {
                        warn!(file = %f.path().display(), error = %e, "ignoring an unreadable outcome file")
                    }
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn housekeeping(&self, policy: &Housekeeping) -> Result<HousekeepingReport> {
        let mut runs = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.root).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HousekeepingReport::default());
            }
            Err(e) => return Err(Error::io("listing runs", e)),
        };
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| Error::io("listing runs", e))?
        {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // .live, not a run
            }
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(crate::limits::millis)
                .unwrap_or(0);
            runs.push((modified, entry.path()));
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.0));
        let running: Vec<String> = self
            .lock()
            .attempts
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.run.to_string())
            .collect();
        let ttl = crate::limits::millis(policy.ttl);
        let mut report = HousekeepingReport::default();
        for (i, (modified, path)) in runs.into_iter().enumerate() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if i < policy.keep_last
                || modified.saturating_add(ttl) > policy.now_ms
                || running.contains(&name)
            {
                continue;
            }
            tokio::fs::remove_dir_all(&path)
                .await
                .map_err(|e| Error::io(format!("deleting {}", path.display()), e))?;
            // A run created again later must find no claim on it here.
            self.lock().creations.retain(|run, _| run.as_str() != name);
            report.deleted.push(path.display().to_string());
        }
        Ok(report)
    }
}

/// The logs of [`LocalBackend`] attempts, read from its log files (on the
/// machine that ran them). Answers queries for one task (the latest
/// attempt when none is named); following reads on until the attempt's
/// outcome is recorded. [`crate::logs::LogCapture`] uses it to keep the
/// output in the store, where every other reader finds it.
#[derive(Debug, Clone)]
pub struct LocalLogSource {
    backend: LocalBackend,
}

impl LocalLogSource {
    /// Reads the attempts of a [`LocalBackend`] keeping its files under
    /// `root` (its files only; no process state).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalLogSource {
            backend: LocalBackend::new(root),
        }
    }

    /// The newest attempt of `task` with a log file.
    fn latest(&self, run: &RunId, task: &str) -> Option<u32> {
        let dir = self.backend.root.join(run.as_str()).join(task);
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
    }
}

#[async_trait]
impl crate::logs::LogSource for LocalLogSource {
    async fn open(&self, query: crate::logs::LogQuery) -> Result<crate::logs::LogStream> {
        use tokio::io::AsyncReadExt;
        let Some(task) = query.task.clone() else {
            return Err(Error::Unsupported {
                message: "the local backend's log files are read one task at a time".into(),
            });
        };
        let attempt = match query.attempt {
            Some(a) => a,
            None => self.latest(&query.run, &task).ok_or_else(|| {
                Error::not_found(format!("logs of task {task:?} of run {}", query.run))
            })?,
        };
        let key = LaunchKey {
            run: query.run.clone(),
            task,
            attempt,
        };
        let path = self.backend.log_path(&key);
        let outcome = self.backend.outcome_path(&key);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!("log of {key} ({})", path.display()))
            } else {
                Error::io(format!("opening {}", path.display()), e)
            }
        })?;
        let follow = query.follow;
        Ok(crate::logs::spawn_log_stream(move |tx| async move {
            let mut decoder = crate::logs::LineDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // Whether the attempt had ended before this read: then the
                // read reaches the end of everything it wrote.
                let ended = !follow || outcome.exists() || !path.exists();
                let mut text = String::new();
                loop {
                    match file.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => text.push_str(&decoder.push(&buf[..n])),
                        Err(e) => {
                            let _ = tx
                                .send(Err(Error::io(format!("reading {}", path.display()), e)))
                                .await;
                            return;
                        }
                    }
                    if text.len() >= 64 * 1024 {
                        break;
                    }
                }
                let more = text.len() >= 64 * 1024;
                if ended && !more {
                    text.push_str(&decoder.finish());
                }
                if !text.is_empty()
                    && tx
                        .send(Ok(crate::logs::LogChunk {
                            task: key.task.clone(),
                            attempt: key.attempt,
                            step: None,
                            text,
                        }))
                        .await
                        .is_err()
                {
                    return;
                }
                if ended && !more {
                    return;
                }
                if !more {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }))
    }
}

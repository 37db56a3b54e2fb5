//! `LocalBackend`: runs a task's `command` as a child process.
//!
//! Each attempt runs `sh -c <command>` in a working directory of its own
//! (`<root>/<run>/<task>/<attempt>/`), in its own process group, with output
//! to `<root>/<run>/<task>/<attempt>.log` and the outcome recorded in
//! `<attempt>.outcome.json` next to it (so a restarted backend can reconcile).
//! Timeout and cancel kill the whole process group.
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use nix::sys::signal::{Signal, killpg};
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

#[derive(Default)]
struct Shared {
    /// Attempts launched by this instance; a present key is never launched again.
    attempts: HashMap<LaunchKey, Option<oneshot::Sender<()>>>,
    /// The creation of each run whose directory this instance has checked.
    creations: HashMap<RunId, u64>,
    observers: Observers,
}

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
                // Launched by an earlier process: report what it left, so the
                // engine is never left waiting for an attempt nobody watches.
                let outcome = std::fs::read(self.outcome_path(&key))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<AttemptOutcome>(&b).ok())
                    .unwrap_or_else(|| AttemptOutcome::Failed {
                        message: format!("lost: started by an earlier process that ended before it finished; log: {handle}"),
                    });
                s.attempts.insert(key.clone(), None);
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
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&command)
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
            if let Ok(json) = serde_json::to_vec(&outcome)
                && let Err(e) = tokio::fs::write(&outcome_path, json).await
            {
                warn!(%key, error = %e, "cannot record the outcome file");
            }
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
        self.lock().observers.subscribe()
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

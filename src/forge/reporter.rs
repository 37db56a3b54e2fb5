//! The reporter: sends commit statuses for the runs the intake started
//! (and for deliveries that could not become runs), durably.
//!
//! The intake tracks a subject in the store ([`Store::track_report`]) before
//! it settles the delivery: `run:<id>` for a run, `delivery:<id>` for a
//! missing or invalid pipeline file. [`Reporter::run`] reads the open
//! subjects, builds the statuses from the run's [`RunView`]
//! ([`super::report`]), sends what [`super::report::due`] says and saves
//! what was sent after each call, so a server killed at any point resumes
//! where it was: each transition is sent once (twice only when the server
//! dies between the forge's answer and the save), the final state always.
//! A subject is closed once the run's final state is reported. A forge
//! that is down or rate limiting delays a subject (backoff up to a
//! minute, `Retry-After` honoured by the client) and never the run.
//!
//! [`RunView`]: stagetime_core::view::RunView

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stagetime_core::control::RunControl;
use stagetime_core::store::{DEFAULT_REPORT_TTL, RunId, Store};
use stagetime_core::{Error, ErrorKind};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::client::{ClientError, ForgeClient};
use super::event::ForgeEvent;
use super::intake::SharedRepositories;
use super::report::{
    ForgeState, ReportSettings, Sent, Status, Target, all_sent, check_run_request, check_summary,
    check_wire, due, due_check, error_status, status_request,
};

/// What the store keeps per reported subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// The repository, as the repositories file names it.
    pub repo: String,
    /// Where the statuses go.
    pub target: Target,
    /// The run reported (absent for a delivery that became none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why the delivery could not become a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The pull request, when the run is for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<u64>,
    /// Stay open until the run's version passes this one (a rerun was
    /// asked for; the run still looks finished until an engine takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_version: Option<u64>,
    /// What was last sent, per context.
    #[serde(default)]
    pub sent: BTreeMap<String, Sent>,
    /// The run's GitHub check run (App mode), once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_run_id: Option<u64>,
}

impl ReportRecord {
    fn of(repo: &str, event: &ForgeEvent) -> ReportRecord {
        ReportRecord {
            repo: repo.to_string(),
            target: Target {
                provider: event.provider,
                repository: event.repository.clone(),
                project_id: event.project_id,
                commit: event.commit.clone(),
            },
            run: None,
            error: None,
            pr: event.pr,
            hold_until_version: None,
            sent: BTreeMap::new(),
            check_run_id: None,
        }
    }
}

/// The subject of a run's report.
pub fn run_subject(id: &str) -> String {
    format!("run:{id}")
}

fn encode(record: &ReportRecord) -> Result<String, Error> {
    serde_json::to_string(record).map_err(|e| Error::internal(format!("report record: {e}")))
}

/// Starts reporting run `run` of `event` (idempotent: a run tracked before
/// keeps its record).
///
/// # Errors
/// As [`Store::track_report`].
pub async fn track_run(
    store: &dyn Store,
    repo: &str,
    event: &ForgeEvent,
    run: &str,
) -> Result<(), Error> {
    let record = ReportRecord {
        run: Some(run.to_string()),
        ..ReportRecord::of(repo, event)
    };
    store
        .track_report(&run_subject(run), encode(&record)?, DEFAULT_REPORT_TTL)
        .await
        .map(|_| ())
}

/// Reports that delivery `delivery` of `event` could not become a run, for
/// `reason` (idempotent per delivery).
///
/// # Errors
/// As [`Store::track_report`].
pub async fn track_failure(
    store: &dyn Store,
    repo: &str,
    event: &ForgeEvent,
    delivery: &str,
    reason: &str,
) -> Result<(), Error> {
    let record = ReportRecord {
        error: Some(reason.to_string()),
        ..ReportRecord::of(repo, event)
    };
    store
        .track_report(
            &format!("delivery:{delivery}"),
            encode(&record)?,
            DEFAULT_REPORT_TTL,
        )
        .await
        .map(|_| ())
}

/// Reopens the report of run `run` after a rerun was recorded at
/// `version`: its new states are reported as they come. Does nothing for a
/// run that was never reported.
///
/// # Errors
/// As [`Store::load_report`] and [`Store::save_report`].
pub async fn reopen(store: &dyn Store, run: &str, version: u64) -> Result<(), Error> {
    let subject = run_subject(run);
    let Some(text) = store.load_report(&subject).await? else {
        return Ok(());
    };
    let mut record: ReportRecord =
        serde_json::from_str(&text).map_err(|e| Error::corrupt(format!("report {subject}"), e))?;
    record.hold_until_version = Some(version);
    // A rerun gets a check run of its own (a completed one stays as it was).
    record.check_run_id = None;
    store.save_report(&subject, encode(&record)?, true).await?;
    Ok(())
}

/// The record of run `run`'s report, if it has one.
///
/// # Errors
/// As [`Store::load_report`]; [`Error::Corrupt`] when it cannot be read.
pub async fn load(store: &dyn Store, run: &str) -> Result<Option<ReportRecord>, Error> {
    let subject = run_subject(run);
    match store.load_report(&subject).await? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::corrupt(format!("report {subject}"), e)),
    }
}

/// Sends the statuses of the open subjects.
#[derive(Clone)]
pub struct Reporter {
    /// Where runs and report records live.
    pub store: Arc<dyn Store>,
    /// The repositories in force.
    pub repos: SharedRepositories,
    /// The forge API client.
    pub client: ForgeClient,
    /// The server's defaults (`--report-context`, `--report-target-url`).
    pub defaults: ReportSettings,
    /// How often open subjects are looked at (default 1 s).
    pub poll: Duration,
    /// The least time between two sends of one context in one state (a
    /// description update; default 5 s). State changes go at once.
    pub coalesce: Duration,
    /// Woken when a subject was tracked or reopened.
    pub wake: Arc<Notify>,
    /// Subjects whose forge was unavailable: not before, and the next wait.
    backoff: Arc<Mutex<HashMap<String, (Instant, Duration)>>>,
    /// Reads runs' views (its plan cache spares a plan per look).
    control: RunControl,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").finish_non_exhaustive()
    }
}

/// Subjects reported at once.
const CONCURRENCY: usize = 8;
/// The first and the longest wait after a forge was unavailable.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Reporter {
    /// A reporter with the default poll and coalescing times.
    pub fn new(
        store: Arc<dyn Store>,
        repos: SharedRepositories,
        client: ForgeClient,
        defaults: ReportSettings,
    ) -> Self {
        Reporter {
            store: Arc::clone(&store),
            repos,
            client,
            defaults,
            poll: Duration::from_secs(1),
            coalesce: Duration::from_secs(5),
            wake: Arc::new(Notify::new()),
            backoff: Arc::default(),
            control: RunControl::new(store),
        }
    }

    /// Reports until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            match self.store.open_reports(1000).await {
                Ok(open) => {
                    let this = &self;
                    futures::stream::iter(open)
                        .for_each_concurrent(CONCURRENCY, |(subject, text)| async move {
                            this.report_one(&subject, &text).await;
                        })
                        .await;
                }
                Err(e @ Error::Unsupported { .. }) => {
                    warn!(error = %e, "forge reporting is off: the store cannot keep reports");
                    return;
                }
                Err(e) => warn!(error = %e, "cannot read the open forge reports"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    fn backing_off(&self, subject: &str) -> bool {
        let map = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(subject)
            .is_some_and(|(until, _)| Instant::now() < *until)
    }

    fn back_off(&self, subject: &str) {
        let mut map = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = map
            .get(subject)
            .map_or(BACKOFF.0, |(_, w)| (*w * 2).min(BACKOFF.1));
        map.insert(subject.to_string(), (Instant::now() + wait, wait));
    }

    fn recovered(&self, subject: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(subject);
    }

    async fn close(&self, subject: &str, record: &ReportRecord) {
        if let Ok(text) = encode(record)
            && let Err(e) = self.store.save_report(subject, text, false).await
        {
            warn!(subject, error = %e, "cannot close a forge report; trying again later");
        }
    }

    /// One round for one subject.
    async fn report_one(&self, subject: &str, text: &str) {
        if self.backing_off(subject) {
            return;
        }
        let mut record: ReportRecord = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                warn!(subject, error = %e, "an unreadable forge report record is dropped");
                let _ = self
                    .store
                    .save_report(subject, text.to_string(), false)
                    .await;
                return;
            }
        };
        let repos = Arc::clone(&*self.repos.read().await);
        let Some(repo) = repos.by_name(&record.repo) else {
            info!(subject, repo = %record.repo, "repository no longer configured; its report ends");
            self.close(subject, &record).await;
            return;
        };
        let settings = repo.report.over(&self.defaults);
        if !settings.statuses {
            self.close(subject, &record).await;
            return;
        }
        let (desired, finished, link, view) = match (&record.run, &record.error) {
            (Some(run), _) => {
                let id = match RunId::new(run.clone()) {
                    Ok(id) => id,
                    Err(_) => {
                        self.close(subject, &record).await;
                        return;
                    }
                };
                let view = match self.control.view(&id).await {
                    Ok(v) => v,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        info!(subject, "the run is gone; its report ends");
                        self.close(subject, &record).await;
                        return;
                    }
                    Err(e) => {
                        warn!(subject, error = %e, "cannot read the run to report");
                        return;
                    }
                };
                let held = record.hold_until_version.is_some_and(|v| view.version <= v);
                let finished = view.state.is_finished() && !held;
                let mut desired = super::report::statuses(&view, &settings);
                if held {
                    // A rerun was asked for: the forge hears of it at once,
                    // before an engine takes it up.
                    for s in &mut desired {
                        s.state = ForgeState::Pending;
                        s.description = "re-run requested".to_string();
                    }
                }
                (desired, finished, settings.link(run), Some(view))
            }
            (None, Some(reason)) => (vec![error_status(reason, &settings)], true, None, None),
            (None, None) => {
                self.close(subject, &record).await;
                return;
            }
        };
        let provider = record.target.provider;
        let now = now_ms();
        let coalesce = self.coalesce.as_millis() as u64;
        // App mode: the aggregate context is a check run; per-stage
        // contexts stay commit statuses.
        let (check, plain) = match desired.split_first() {
            Some((first, rest)) if self.client.uses_app(repo) => (Some(first), rest),
            _ => (None, &desired[..]),
        };
        let mut held = false;
        if let Some(status) = check {
            let plan = due_check(status, &record.sent, now, coalesce);
            held |= plan.held;
            for s in &plan.send {
                let summary = match &view {
                    Some(v) => check_summary(v, link.as_deref(), now_ms()),
                    None => s.description.clone(),
                };
                let external = record.run.clone().unwrap_or_else(|| subject.to_string());
                let (patch, path, body) = check_run_request(
                    &record.target,
                    record.check_run_id,
                    &external,
                    s,
                    &summary,
                    link.as_deref(),
                    &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                );
                let result = if patch {
                    self.client.patch_json(repo, &path, &body).await
                } else {
                    self.client.post_json(repo, &path, &body).await
                };
                match result {
                    Ok(answer) => {
                        if !patch {
                            record.check_run_id = answer["id"].as_u64();
                        }
                        info!(subject, check_run = ?record.check_run_id, state = check_wire(s.state), "check run sent");
                    }
                    Err(ClientError::Unavailable(e)) => {
                        warn!(subject, error = %e, "the forge is unavailable; the check run is sent later");
                        self.back_off(subject);
                        return;
                    }
                    Err(e) => warn!(subject, error = %e, "the forge refused a check run"),
                }
                if !self.remember(subject, &mut record, s).await {
                    return;
                }
            }
        }
        let plan = due(provider, plain, &record.sent, now, coalesce);
        held |= plan.held;
        for status in &plan.send {
            match self
                .send(repo, &record.target, status, link.as_deref())
                .await
            {
                Ok(()) => {}
                Err(ClientError::Unavailable(e)) => {
                    warn!(subject, context = %status.context, error = %e, "the forge is unavailable; the status is sent later");
                    self.back_off(subject);
                    return;
                }
                Err(e) => {
                    // Refused (no permission, a body the forge does not
                    // take): trying again will not help; count it as sent.
                    warn!(subject, context = %status.context, error = %e, "the forge refused a commit status");
                }
            }
            if !self.remember(subject, &mut record, status).await {
                return;
            }
        }
        self.recovered(subject);
        if held {
            return;
        }
        if record.hold_until_version.is_some() && finished {
            record.hold_until_version = None;
        }
        let check_done = check.is_none_or(|c| {
            record
                .sent
                .get(&c.context)
                .is_some_and(|p| check_wire(p.state) == check_wire(c.state))
        });
        if finished && check_done && all_sent(provider, plain, &record.sent) {
            debug!(subject, "final state reported");
            self.close(subject, &record).await;
        }
    }

    /// Records `status` as sent and saves the record; false when it cannot
    /// be saved (the round stops; the status may be sent again).
    async fn remember(&self, subject: &str, record: &mut ReportRecord, status: &Status) -> bool {
        record.sent.insert(
            status.context.clone(),
            Sent {
                state: status.state,
                description: status.description.clone(),
                at_ms: now_ms(),
            },
        );
        match self
            .store
            .save_report(subject, encode(record).unwrap_or_default(), true)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                warn!(subject, error = %e, "cannot save a sent status; it may be sent again");
                false
            }
        }
    }

    async fn send(
        &self,
        repo: &super::RepoConfig,
        target: &Target,
        status: &Status,
        link: Option<&str>,
    ) -> Result<(), ClientError> {
        let (path, body) = status_request(target, status, link);
        self.client.post_json(repo, &path, &body).await?;
        info!(
            provider = target.provider.as_str(),
            repository = %target.repository,
            commit = %target.commit,
            context = %status.context,
            state = status.state.wire(target.provider),
            "commit status sent"
        );
        Ok(())
    }
}

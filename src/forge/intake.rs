//! The intake: verified deliveries recorded in the [`Store`] become runs
//! after the webhook was answered.
//!
//! The HTTP handler records a delivery (idempotent on its id, 72 h) before
//! answering 2xx; [`IntakeLoop::run`] then reads the pending deliveries,
//! asks the forge for the changed files (when a `paths` filter needs them)
//! and the pipeline file, submits the run (trusted, with the event as
//! `stagetime/` annotations, run id deterministic) and settles the delivery
//! as `done` or `failed` with the reason. A delivery still pending when the
//! server stops is taken up by the next start (or by another replica:
//! submissions are idempotent). A forge that is unavailable leaves the
//! delivery pending and it is tried again later.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use stagetime_core::Error;
use stagetime_core::control::{RunControl, SubmitOptions};
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::store::{Delivery, DeliveryState, RunFilter, Store};
use tokio::sync::{Notify, RwLock};
use tracing::{info, warn};

use super::client::{ClientError, ForgeClient};
use super::config::Repositories;
use super::event::{Command, CommentCommand, ForgeEvent};
use super::reporter;
use super::trigger::{build_spec, paths_filter, paths_match};

type Labels = Vec<(&'static str, String)>;

/// Deliveries turned into runs at once.
const CONCURRENCY: usize = 8;

/// The webhook and intake metric families (cheap to clone).
///
/// | family | labels |
/// |---|---|
/// | `stagetime_webhook_deliveries_total` | `provider`, `outcome` (`accepted`, `duplicate`, `ignored`, `unknown_repository`, `unauthorized`, `forbidden`, `bad_request`, `too_large`, `unavailable`) |
/// | `stagetime_intake_total` | `outcome` (`run`, `existing_run`, `skipped`, `failed`, `retry`, `command`, `command_refused`) |
/// | `stagetime_intake_failures_total` | `reason` (`missing_file`, `invalid_file`, `forge_refused`) |
#[derive(Clone, Default)]
pub struct ForgeMetrics {
    deliveries: Family<Labels, Counter>,
    intake: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
}

impl std::fmt::Debug for ForgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgeMetrics").finish_non_exhaustive()
    }
}

impl ForgeMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ForgeMetrics::default();
        registry.register(
            "stagetime_webhook_deliveries",
            "Webhook deliveries by provider and how they were answered",
            m.deliveries.clone(),
        );
        registry.register(
            "stagetime_intake",
            "Recorded deliveries processed by the intake, by outcome",
            m.intake.clone(),
        );
        registry.register(
            "stagetime_intake_failures",
            "Deliveries that could not become a run, by reason",
            m.failures.clone(),
        );
        m
    }

    /// Counts one answered delivery.
    pub fn delivery(&self, provider: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&vec![
                ("provider", provider.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    fn intake(&self, outcome: &'static str) {
        self.intake
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    fn failure(&self, reason: &'static str) {
        self.failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

/// The repositories file in force, replaced as a whole on a good reload.
pub type SharedRepositories = Arc<RwLock<Arc<Repositories>>>;

/// Turns pending deliveries into runs.
#[derive(Clone)]
pub struct IntakeLoop {
    /// Where deliveries and runs live.
    pub store: Arc<dyn Store>,
    /// The repositories in force.
    pub repos: SharedRepositories,
    /// The forge API client.
    pub client: ForgeClient,
    /// Metrics.
    pub metrics: ForgeMetrics,
    /// Woken by the handler after it recorded a delivery.
    pub wake: Arc<Notify>,
    /// How often pending deliveries are looked at without a wake-up (and
    /// how long a delivery whose forge was unavailable waits; default 5 s).
    pub poll: Duration,
    /// Woken after a run's report was tracked (the reporter waits on it).
    pub report_wake: Option<Arc<Notify>>,
}

impl std::fmt::Debug for IntakeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeLoop").finish_non_exhaustive()
    }
}

/// What became of one delivery.
enum Outcome {
    /// Settle it with this final form.
    Settle(Delivery),
    /// Leave it pending (the forge or the store was unavailable).
    Retry(String),
}

impl IntakeLoop {
    /// Processes pending deliveries until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        tokio::pin!(shutdown);
        loop {
            match self.store.pending_deliveries(64).await {
                Ok(pending) => {
                    // A few at once, so that one slow forge does not hold up the others.
                    let this = &self;
                    futures::stream::iter(pending)
                        .for_each_concurrent(CONCURRENCY, |d| async move {
                            this.process_one(d).await;
                        })
                        .await;
                }
                Err(e) => warn!(error = %e, "cannot read pending deliveries"),
            }
            // New deliveries wake the loop at once; ones left pending (the
            // forge or the store unavailable) wait for the next poll.
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// Processes one delivery; false when it stays pending.
    pub async fn process_one(&self, delivery: Delivery) -> bool {
        let id = delivery.id.clone();
        match self.turn_into_run(delivery).await {
            Outcome::Settle(d) => {
                // Reporting is tracked before the delivery is settled: a
                // server that stops in between processes it again.
                if let Err(e) = self.track_reports(&d).await {
                    self.metrics.intake("retry");
                    warn!(delivery = %id, error = %e, "cannot track the delivery's forge report; trying again later");
                    return false;
                }
                if d.state == DeliveryState::Failed {
                    warn!(delivery = %id, repo = %d.repo, reason = d.message.as_deref().unwrap_or(""), "webhook delivery could not become a run");
                } else {
                    info!(delivery = %id, repo = %d.repo, runs = ?d.runs, message = d.message.as_deref().unwrap_or(""), "webhook delivery processed");
                }
                match self.store.settle_delivery(d).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(delivery = %id, error = %e, "cannot settle a delivery; it stays pending");
                        false
                    }
                }
            }
            Outcome::Retry(why) => {
                self.metrics.intake("retry");
                warn!(delivery = %id, reason = %why, "delivery stays pending; trying again later");
                false
            }
        }
    }

    /// Carries out a command from a pull request comment, when its author
    /// may (write access on the forge, or `trusted` in the repositories
    /// file); anyone else gets a polite reply and nothing happens.
    async fn command(&self, delivery: &Delivery, cmd: CommentCommand) -> Outcome {
        let done = |message: String, runs: Vec<String>| {
            Outcome::Settle(Delivery {
                state: DeliveryState::Done,
                message: Some(message),
                runs,
                ..delivery.clone()
            })
        };
        let repos = Arc::clone(&*self.repos.read().await);
        let Some(repo) = repos.by_name(&delivery.repo) else {
            return done(
                format!("repository {} is no longer configured", delivery.repo),
                vec![],
            );
        };
        if let Command::Rerequested { run, commit } = &cmd.command {
            // GitHub offers "Re-run" only to people with write access, and
            // the delivery is signed: no permission to ask.
            return self
                .rerequested(delivery, repo, run.as_deref(), commit)
                .await;
        }
        let trusted = repo
            .trusted
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&cmd.commenter));
        let permitted = trusted
            || match self.client.may_command(repo, &cmd).await {
                Ok(p) => p,
                Err(ClientError::Unavailable(e)) => return Outcome::Retry(e),
                Err(e) => {
                    warn!(delivery = %delivery.id, error = %e, "cannot ask the forge for a commenter's permission");
                    false
                }
            };
        let cmd = &cmd;
        let reply = |text: String| async move {
            if let Err(e) = self.client.comment(repo, cmd, &text).await {
                warn!(delivery = %delivery.id, error = %e, "cannot reply to a comment");
            }
        };
        if !permitted {
            self.metrics.intake("command_refused");
            reply(format!(
                "@{} thanks — `{}` can only be used by people with write access to this repository, so nothing was done. A maintainer can run it for you.",
                cmd.commenter,
                cmd.command.text()
            ))
            .await;
            return done(format!("{} may not command runs", cmd.commenter), vec![]);
        }
        let group = super::trigger::pr_group(&repo.name, cmd.pr);
        let latest = match self
            .store
            .list_runs(&RunFilter {
                concurrency_group: Some(group),
                limit: 1,
                ..RunFilter::default()
            })
            .await
        {
            Ok(page) => page.runs.into_iter().next(),
            Err(e) if e.is_retryable() => return Outcome::Retry(e.to_string()),
            Err(e) => return done(format!("cannot list the runs: {e}"), vec![]),
        };
        if cmd.command == Command::OkToTest {
            return self.ok_to_test(delivery, repo, cmd).await;
        }
        let Some(latest) = latest else {
            reply(format!(
                "@{} there is no run for this pull request yet.",
                cmd.commenter
            ))
            .await;
            return done("no run for this pull request".to_string(), vec![]);
        };
        let id = latest.id.clone();
        let control = RunControl::new(Arc::clone(&self.store));
        self.metrics.intake("command");
        match &cmd.command {
            Command::Cancel => match control.cancel(&id).await {
                Ok(()) => {
                    info!(run = %id, by = %cmd.commenter, "run cancelled from a comment");
                    done(format!("/cancel of {id}"), vec![id.to_string()])
                }
                Err(e) if e.is_retryable() => Outcome::Retry(e.to_string()),
                Err(e) => done(format!("cannot cancel {id}: {e}"), vec![]),
            },
            Command::Retest { task } => {
                let record = match self.store.load_run(&id).await {
                    Ok(r) => r,
                    Err(e) if e.is_retryable() => return Outcome::Retry(e.to_string()),
                    Err(e) => return done(format!("cannot read {id}: {e}"), vec![]),
                };
                let view = match control.view_of(&record) {
                    Ok(v) => v,
                    Err(e) => return done(format!("cannot read {id}: {e}"), vec![]),
                };
                let refuse = |text: String| async move {
                    reply(format!("@{} {text}", cmd.commenter)).await;
                    done(text, vec![])
                };
                if !view.state.is_finished() {
                    return refuse(format!(
                        "run `{id}` is still {}; `/retest` waits until it ends.",
                        view.state.as_str()
                    ))
                    .await;
                }
                if let Some(name) = task
                    && view.task(name).is_none()
                {
                    return refuse(format!("run `{id}` has no task `{name}`.")).await;
                }
                if task.is_none() && view.tasks.iter().all(|t| t.status == TaskStatus::Succeeded) {
                    return refuse(format!(
                        "every task of run `{id}` succeeded; there is nothing to re-run (`/retest NAME` runs one again)."
                    ))
                    .await;
                }
                let named: Vec<String> = task.iter().cloned().collect();
                match control.rerun_tasks(&id, Some(record.version), &named).await {
                    Ok(version) => {
                        if let Err(e) = reporter::reopen(&*self.store, id.as_str(), version).await {
                            warn!(run = %id, error = %e, "cannot reopen the run's forge report");
                        }
                        if let Some(wake) = &self.report_wake {
                            wake.notify_one();
                        }
                        info!(run = %id, by = %cmd.commenter, "run re-run from a comment");
                        done(
                            format!("{} of {id}", cmd.command.text()),
                            vec![id.to_string()],
                        )
                    }
                    Err(e) if e.is_retryable() => Outcome::Retry(e.to_string()),
                    // Re-run already (a repeated delivery after a restart).
                    Err(e) => done(format!("cannot re-run {id}: {e}"), vec![]),
                }
            }
            Command::OkToTest | Command::Rerequested { .. } => {
                done("/ok-to-test is not supported".to_string(), vec![])
            }
        }
    }

    /// `/ok-to-test` from someone with write access: the pull request (a
    /// fork's, which its own events do not run) is read from the forge and
    /// run as if it had just been opened, fork or not; the `on` filters
    /// still apply.
    async fn ok_to_test(
        &self,
        delivery: &Delivery,
        repo: &super::RepoConfig,
        cmd: &CommentCommand,
    ) -> Outcome {
        let done = |message: String| {
            Outcome::Settle(Delivery {
                state: DeliveryState::Done,
                message: Some(message),
                ..delivery.clone()
            })
        };
        let event = match self.client.pull_request(repo, cmd).await {
            Ok(Some(e)) => e,
            Ok(None) => return done(format!("pull request {} is not open", cmd.pr)),
            Err(ClientError::Unavailable(e)) => return Outcome::Retry(e),
            Err(e) => return done(format!("cannot read pull request {}: {e}", cmd.pr)),
        };
        let unforked = ForgeEvent {
            fork: false,
            ..event.clone()
        };
        if let super::trigger::Decision::Skip(why) = super::trigger::decide(repo, &unforked) {
            return done(format!("/ok-to-test: {why}"));
        }
        let outcome = self.run_event(delivery, event.clone()).await;
        if let Outcome::Settle(d) = &outcome {
            let tracked = match d.state {
                DeliveryState::Failed => {
                    let reason = d.message.as_deref().unwrap_or("the run could not be made");
                    reporter::track_failure(&*self.store, &d.repo, &event, &d.id, reason).await
                }
                _ => {
                    let mut result = Ok(());
                    for run in &d.runs {
                        result = result
                            .and(reporter::track_run(&*self.store, &d.repo, &event, run).await);
                    }
                    result
                }
            };
            if let Err(e) = tracked {
                return Outcome::Retry(format!("cannot track the run's forge report: {e}"));
            }
            if let Some(wake) = &self.report_wake {
                wake.notify_one();
            }
            info!(delivery = %d.id, by = %cmd.commenter, runs = ?d.runs, "pull request run allowed by /ok-to-test");
        }
        outcome
    }

    /// GitHub's re-run of a check run (the run named by its `external_id`)
    /// or of a commit's checks (the newest run of the commit): rerun,
    /// keeping succeeded tasks.
    async fn rerequested(
        &self,
        delivery: &Delivery,
        repo: &super::RepoConfig,
        run: Option<&str>,
        commit: &str,
    ) -> Outcome {
        let done = |message: String, runs: Vec<String>| {
            Outcome::Settle(Delivery {
                state: DeliveryState::Done,
                message: Some(message),
                runs,
                ..delivery.clone()
            })
        };
        let id = match run.map(|r| stagetime_core::RunId::new(r.to_string())) {
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => None,
            None => match self
                .store
                .list_runs(&RunFilter {
                    repo: Some(repo.name.clone()),
                    commit: Some(commit.to_string()),
                    limit: 1,
                    ..RunFilter::default()
                })
                .await
            {
                Ok(page) => page.runs.into_iter().next().map(|r| r.id),
                Err(e) if e.is_retryable() => return Outcome::Retry(e.to_string()),
                Err(e) => return done(format!("cannot list the runs: {e}"), vec![]),
            },
        };
        let Some(id) = id else {
            return done(format!("no run of {commit} to re-run"), vec![]);
        };
        let control = RunControl::new(Arc::clone(&self.store));
        let record = match self.store.load_run(&id).await {
            Ok(r) if r.spec.repo == repo.name && r.spec.commit == commit => r,
            Ok(_) => return done(format!("{id} is not a run of {commit}"), vec![]),
            Err(e) if e.is_retryable() => return Outcome::Retry(e.to_string()),
            Err(e) => return done(format!("cannot read {id}: {e}"), vec![]),
        };
        if !record.state.is_finished() {
            return done(format!("{id} is still {}", record.state.as_str()), vec![]);
        }
        match control.rerun(&id, Some(record.version)).await {
            Ok(version) => {
                self.metrics.intake("command");
                if let Err(e) = reporter::reopen(&*self.store, id.as_str(), version).await {
                    warn!(run = %id, error = %e, "cannot reopen the run's forge report");
                }
                if let Some(wake) = &self.report_wake {
                    wake.notify_one();
                }
                info!(run = %id, "run re-run as GitHub asked");
                done(format!("re-run of {id}"), vec![id.to_string()])
            }
            Err(e) if e.is_retryable() => Outcome::Retry(e.to_string()),
            Err(e) => done(format!("cannot re-run {id}: {e}"), vec![]),
        }
    }

    /// Tracks the report of what the delivery became: its runs, or its
    /// failure (a failure the forge should hear of: not one of the store).
    async fn track_reports(&self, d: &Delivery) -> Result<(), Error> {
        if serde_json::from_str::<CommentCommand>(&d.event).is_ok() {
            return Ok(());
        }
        let Ok(event) = serde_json::from_str::<ForgeEvent>(&d.event) else {
            return Ok(());
        };
        match d.state {
            DeliveryState::Failed => {
                let reason = d.message.as_deref().unwrap_or("the run could not be made");
                reporter::track_failure(&*self.store, &d.repo, &event, &d.id, reason).await
            }
            _ => {
                for run in &d.runs {
                    reporter::track_run(&*self.store, &d.repo, &event, run).await?;
                }
                if let Some(wake) = &self.report_wake {
                    wake.notify_one();
                }
                Ok(())
            }
        }
    }

    async fn turn_into_run(&self, delivery: Delivery) -> Outcome {
        if let Ok(cmd) = serde_json::from_str::<CommentCommand>(&delivery.event) {
            return self.command(&delivery, cmd).await;
        }
        let event: ForgeEvent = match serde_json::from_str(&delivery.event) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.intake("failed");
                return Outcome::Settle(Delivery {
                    state: DeliveryState::Failed,
                    message: Some(format!("the recorded event cannot be read: {e}")),
                    ..delivery
                });
            }
        };
        self.run_event(&delivery, event).await
    }

    /// Turns `event` into a run: changed files, the pipeline file, the
    /// run's document, the submission.
    async fn run_event(&self, delivery: &Delivery, event: ForgeEvent) -> Outcome {
        let delivery = delivery.clone();
        let fail = |d: &Delivery, message: String| {
            Outcome::Settle(Delivery {
                state: DeliveryState::Failed,
                message: Some(message),
                ..d.clone()
            })
        };
        let done = |d: &Delivery, message: Option<String>, runs: Vec<String>| {
            Outcome::Settle(Delivery {
                state: DeliveryState::Done,
                message,
                runs,
                ..d.clone()
            })
        };
        let repos = Arc::clone(&*self.repos.read().await);
        let Some(repo) = repos.by_name(&delivery.repo) else {
            self.metrics.intake("skipped");
            return done(
                &delivery,
                Some(format!(
                    "repository {} is no longer configured",
                    delivery.repo
                )),
                vec![],
            );
        };
        // Changed files: from the payload, else from the forge when a filter needs them.
        let mut changed = event.changed_files.clone();
        if changed.is_none() && paths_filter(repo, &event).is_some() {
            match self.client.changed_files(repo, &event).await {
                Ok(files) => changed = files,
                Err(ClientError::Unavailable(e)) => return Outcome::Retry(e),
                Err(e) => {
                    self.metrics.intake("failed");
                    self.metrics.failure("forge_refused");
                    return fail(&delivery, format!("cannot list the changed files: {e}"));
                }
            }
        }
        if let (Some(paths), Some(files)) = (paths_filter(repo, &event), &changed)
            && !paths_match(paths, files)
        {
            self.metrics.intake("skipped");
            return done(
                &delivery,
                Some("no changed file matches `paths`".to_string()),
                vec![],
            );
        }
        let file = match self.client.pipeline_file(repo, &event).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.metrics.intake("failed");
                self.metrics.failure("missing_file");
                return fail(
                    &delivery,
                    format!("{} not found at commit {}", repo.pipeline, event.commit),
                );
            }
            Err(ClientError::Unavailable(e)) => return Outcome::Retry(e),
            Err(e) => {
                self.metrics.intake("failed");
                self.metrics.failure("forge_refused");
                return fail(&delivery, format!("cannot fetch {}: {e}", repo.pipeline));
            }
        };
        let spec = match build_spec(repo, &event, &file, changed.as_deref()) {
            Ok(Some(spec)) => spec,
            Ok(None) => {
                self.metrics.intake("skipped");
                return done(
                    &delivery,
                    Some("no task selected for this event".to_string()),
                    vec![],
                );
            }
            Err(e) => {
                self.metrics.intake("failed");
                self.metrics.failure("invalid_file");
                return fail(&delivery, format!("{} is invalid: {e}", repo.pipeline));
            }
        };
        let id = spec.id.clone().unwrap_or_default();
        let control = RunControl::new(Arc::clone(&self.store));
        match control
            .submit_with(
                spec,
                SubmitOptions {
                    runnable_by: None,
                    trusted: true,
                },
            )
            .await
        {
            Ok(s) => {
                self.metrics
                    .intake(if s.created { "run" } else { "existing_run" });
                done(&delivery, None, vec![s.id.to_string()])
            }
            // The same event delivered again under a new delivery id: the
            // run exists (its annotations name the first delivery).
            Err(Error::AlreadyExists { .. }) => {
                self.metrics.intake("existing_run");
                done(
                    &delivery,
                    Some("the run exists already".to_string()),
                    vec![id],
                )
            }
            Err(Error::Invalid(errors)) => {
                self.metrics.intake("failed");
                self.metrics.failure("invalid_file");
                fail(&delivery, format!("{} is invalid: {errors}", repo.pipeline))
            }
            Err(e) if e.is_retryable() => Outcome::Retry(e.to_string()),
            Err(e) => {
                self.metrics.intake("failed");
                fail(&delivery, format!("cannot submit the run: {e}"))
            }
        }
    }
}

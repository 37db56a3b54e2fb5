//! A RevisionRun's `status`, computed from its run's record — pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use stagetime_core::RunState;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::view::{RunView, StagePhase, StageView};

use crate::crd::{RevisionRunStatus, StageSummary, TaskSummary};

/// Condition type: the RevisionRun was resolved and its run submitted.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the run's outcome (Unknown while it runs).
pub const CONDITION_SUCCEEDED: &str = "Succeeded";

/// `status.phase` values.
pub mod phase {
    /// Submitted, not started.
    pub const PENDING: &str = "Pending";
    /// Running.
    pub const RUNNING: &str = "Running";
    /// Every task succeeded or was allowed to fail.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Something failed.
    pub const FAILED: &str = "Failed";
    /// Cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// The RevisionRun cannot be run as it is (see the `Ready` condition).
    pub const ERROR: &str = "Error";
}

/// Condition reasons the operator writes.
pub mod reason {
    /// Ready: the run was submitted.
    pub const SUBMITTED: &str = "Submitted";
    /// Ready False: the Repo does not exist.
    pub const REPO_NOT_FOUND: &str = "RepoNotFound";
    /// Ready False: a PipelineRunTemplate does not exist.
    pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
    /// Ready False: an override, a template or the resulting run is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Succeeded Unknown: waiting for a worker to start the run.
    pub const QUEUED: &str = "Queued";
    /// Succeeded Unknown: running.
    pub const RUNNING: &str = "Running";
    /// Succeeded True.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Succeeded False: a task failed.
    pub const FAILED: &str = "Failed";
    /// Succeeded False: cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// Succeeded Unknown: the RevisionRun was not submitted.
    pub const NOT_SUBMITTED: &str = "NotSubmitted";
}

/// Sets condition `type_` in `conditions` (adding it when missing). The
/// `lastTransitionTime` changes only when the status does.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let message = message.into();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now.clone();
        }
        c.status = status.to_string();
        c.reason = reason.to_string();
        c.message = message;
        c.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        });
    }
}

/// The condition `type_`, if set.
pub fn condition<'a>(status: &'a RevisionRunStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// The CRD's word for a stage phase (capitalised, as Tekton writes reasons).
fn stage_phase_name(p: StagePhase) -> &'static str {
    match p {
        StagePhase::Pending => phase::PENDING,
        StagePhase::Running => phase::RUNNING,
        StagePhase::Succeeded => phase::SUCCEEDED,
        StagePhase::Failed => phase::FAILED,
        StagePhase::Cancelled => phase::CANCELLED,
        StagePhase::Skipped => "Skipped",
    }
}

/// `0`, `1`, ... or `finally`.
fn stage_label(stage: &StageView) -> String {
    stage
        .number
        .map_or_else(|| "finally".to_string(), |n| n.to_string())
}

/// Status of a RevisionRun whose run is `run`: phase, stage, per-stage
/// and per-task summaries (with PipelineRun names), `observedGeneration`,
/// and the `Ready` (True, `Submitted`) and `Succeeded` conditions. `previous`
/// is the status as read (its conditions keep their transition times).
pub fn status_from_view(
    run: &RunView,
    generation: Option<i64>,
    previous: Option<&RevisionRunStatus>,
    now: &Time,
) -> RevisionRunStatus {
    let stages: Vec<StageSummary> = run
        .stages
        .iter()
        .map(|s| StageSummary {
            stage: stage_label(s),
            phase: stage_phase_name(s.phase).to_string(),
            tasks: s.total,
            succeeded: s.succeeded,
            failed: s.failed,
            running: s.running,
        })
        .collect();
    // Stage order, `finally` last; plan order within a stage.
    let tasks: Vec<TaskSummary> = run
        .stages
        .iter()
        .flat_map(|s| run.tasks_of(s).map(move |t| (s, t)))
        .map(|(s, t)| TaskSummary {
            id: t.name.clone(),
            stage: stage_label(s),
            status: t.status.as_str().to_string(),
            attempt: t.attempt,
            pipeline_run: t.timing.handle.clone(),
            message: t.message.clone(),
        })
        .collect();
    let current = run.current_stage().map(stage_label);
    let last_ran = run.last_started_stage().map(stage_label);

    let (phase, succeeded, why) = match run.state {
        RunState::Queued => (phase::PENDING, "Unknown", reason::QUEUED),
        RunState::Running => (phase::RUNNING, "Unknown", reason::RUNNING),
        RunState::Succeeded => (phase::SUCCEEDED, "True", reason::SUCCEEDED),
        RunState::Failed => (phase::FAILED, "False", reason::FAILED),
        RunState::Cancelled => (phase::CANCELLED, "False", reason::CANCELLED),
    };
    let message = match run.state {
        RunState::Queued => "waiting for a worker to start the run".to_string(),
        RunState::Running => format!(
            "stage {} running",
            current.clone().unwrap_or_else(|| "?".to_string())
        ),
        RunState::Succeeded => "every task succeeded or was allowed to fail".to_string(),
        RunState::Failed => {
            let failed: Vec<&str> = run
                .tasks
                .iter()
                .filter(|t| matches!(t.status, TaskStatus::Failed | TaskStatus::TimedOut))
                .map(|t| t.name.as_str())
                .collect();
            if failed.is_empty() {
                "the run failed".to_string()
            } else {
                format!("failed: {}", failed.join(", "))
            }
        }
        RunState::Cancelled => "the run was cancelled".to_string(),
    };
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    set_condition(
        &mut conditions,
        CONDITION_READY,
        "True",
        reason::SUBMITTED,
        format!("submitted as run {}", run.id),
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        CONDITION_SUCCEEDED,
        succeeded,
        why,
        message,
        generation,
        now,
    );
    RevisionRunStatus {
        phase: Some(phase.to_string()),
        stage: if run.state.is_finished() {
            last_ran
        } else {
            current.or(last_ran)
        },
        run_id: Some(run.id.to_string()),
        revision: Some(run.commit.clone()),
        observed_generation: generation,
        stages,
        tasks,
        conditions,
    }
}

/// Status of a RevisionRun that cannot be submitted: phase `Error`, `Ready`
/// False with `reason` and `message`, `Succeeded` Unknown (`NotSubmitted`).
/// A run submitted for an earlier generation keeps its summaries.
pub fn error_status(
    previous: Option<&RevisionRunStatus>,
    generation: Option<i64>,
    why: &str,
    message: &str,
    now: &Time,
) -> RevisionRunStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(phase::ERROR.to_string());
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        "False",
        why,
        message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        CONDITION_SUCCEEDED,
        "Unknown",
        reason::NOT_SUBMITTED,
        "not submitted: see the Ready condition",
        generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagetime_core::plan::Plan;
    use stagetime_core::scheduler::{AttemptOutcome, Command, Event, StageScheduler};
    use stagetime_core::store::{RECORD_FORMAT, TaskTiming};
    use stagetime_core::{RevisionRunSpec, RunRecord};
    use std::sync::Arc;

    fn record(drive: impl FnOnce(&mut StageScheduler, &mut Vec<Command>)) -> RunRecord {
        let spec: RevisionRunSpec = yaml_serde::from_str(
            r#"
id: demo-1
repo: app
commit: main
tasks:
  - { name: lint, stage: 0, pipeline: { ref: p } }
  - { name: unit, stage: 0, can_fail: true, pipeline: { ref: p } }
  - { name: image, stage: 1, pipeline: { ref: p } }
finally:
  - { name: notify, pipeline: { ref: p } }
"#,
        )
        .expect("spec");
        let plan = Arc::new(Plan::build(spec).expect("plan"));
        let mut s = StageScheduler::new(Arc::clone(&plan), 1);
        let mut cmds = s.handle(Event::Start);
        drive(&mut s, &mut cmds);
        let state = s.into_state();
        let mut timings = vec![TaskTiming::default(); plan.len()];
        timings[0].handle = Some("st-0-lint-a1".into());
        RunRecord {
            format: RECORD_FORMAT,
            id: stagetime_core::RunId::new("demo-1").expect("id"),
            version: 1,
            spec: plan.to_spec(),
            state: RunState::of(&state),
            scheduler: state,
            created_ms: 0,
            updated_ms: 0,
            finished_ms: None,
            timings,
            outbox: Vec::new(),
        }
    }

    fn finish(s: &mut StageScheduler, task: &str, outcome: AttemptOutcome) -> Vec<Command> {
        let i = s.plan().index_of(task).expect("task");
        s.handle(Event::TaskFinished {
            task: i,
            attempt: 1,
            outcome,
        })
    }

    fn view(r: &RunRecord) -> RunView {
        stagetime_core::PlanCache::default().view(r).expect("view")
    }

    fn t0() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn a_running_run_shows_its_stage_tasks_and_conditions() {
        let r = record(|_, _| {});
        let st = status_from_view(&view(&r), Some(3), None, &t0());
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.stage.as_deref(), Some("0"));
        assert_eq!(st.run_id.as_deref(), Some("demo-1"));
        assert_eq!(st.revision.as_deref(), Some("main"));
        assert_eq!(st.observed_generation, Some(3));
        let stages: Vec<(&str, &str, u32)> = st
            .stages
            .iter()
            .map(|s| (s.stage.as_str(), s.phase.as_str(), s.tasks))
            .collect();
        assert_eq!(
            stages,
            [
                ("0", "Running", 2),
                ("1", "Pending", 1),
                ("finally", "Pending", 1)
            ]
        );
        assert_eq!(st.tasks[0].id, "lint");
        assert_eq!(st.tasks[0].status, "running");
        assert_eq!(st.tasks[0].pipeline_run.as_deref(), Some("st-0-lint-a1"));
        assert_eq!(st.tasks[2].status, "waiting");
        let ready = condition(&st, CONDITION_READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Submitted")
        );
        let done = condition(&st, CONDITION_SUCCEEDED).expect("succeeded");
        assert_eq!(
            (done.status.as_str(), done.reason.as_str()),
            ("Unknown", "Running")
        );
    }

    #[test]
    fn a_finished_run_succeeds_with_an_allowed_failure() {
        let r = record(|s, _| {
            finish(s, "lint", AttemptOutcome::Succeeded);
            finish(
                s,
                "unit",
                AttemptOutcome::Failed {
                    message: "boom".into(),
                },
            );
            finish(s, "image", AttemptOutcome::Succeeded);
            finish(s, "notify", AttemptOutcome::Succeeded);
        });
        assert_eq!(r.state, RunState::Succeeded, "{:#?}", r.scheduler);
        let before = status_from_view(&view(&record(|_, _| {})), Some(1), None, &t0());
        let later = Time(Timestamp::from_second(1_700_000_000).expect("ts"));
        let st = status_from_view(&view(&r), Some(1), Some(&before), &later);
        assert_eq!(st.phase.as_deref(), Some("Succeeded"));
        assert_eq!(st.stage.as_deref(), Some("finally"));
        let phases: Vec<&str> = st.stages.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(phases, ["Succeeded", "Succeeded", "Succeeded"]);
        assert_eq!(st.stages[0].failed, 1);
        let done = condition(&st, CONDITION_SUCCEEDED).expect("succeeded");
        assert_eq!(
            (done.status.as_str(), done.reason.as_str()),
            ("True", "Succeeded")
        );
        assert_eq!(done.last_transition_time, later, "changed status: new time");
        let ready = condition(&st, CONDITION_READY).expect("ready");
        assert_eq!(ready.last_transition_time, t0(), "same status: time kept");
    }

    #[test]
    fn a_failed_run_names_the_failed_tasks() {
        let r = record(|s, _| {
            finish(
                s,
                "lint",
                AttemptOutcome::Failed {
                    message: "lint errors".into(),
                },
            );
            finish(s, "unit", AttemptOutcome::Succeeded);
            finish(s, "notify", AttemptOutcome::Succeeded);
        });
        assert_eq!(r.state, RunState::Failed);
        let st = status_from_view(&view(&r), Some(1), None, &t0());
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        assert_eq!(st.stages[0].phase, "Failed");
        assert_eq!(st.stages[1].phase, "Skipped");
        let done = condition(&st, CONDITION_SUCCEEDED).expect("succeeded");
        assert_eq!(
            (done.status.as_str(), done.reason.as_str()),
            ("False", "Failed")
        );
        assert!(done.message.contains("lint"), "{}", done.message);
    }

    #[test]
    fn errors_set_ready_false_with_the_reason() {
        let st = error_status(
            None,
            Some(4),
            reason::REPO_NOT_FOUND,
            "Repo \"app\" not found",
            &t0(),
        );
        assert_eq!(st.phase.as_deref(), Some("Error"));
        assert_eq!(st.observed_generation, Some(4));
        let ready = condition(&st, CONDITION_READY).expect("ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RepoNotFound")
        );
        assert_eq!(ready.message, "Repo \"app\" not found");
        let done = condition(&st, CONDITION_SUCCEEDED).expect("succeeded");
        assert_eq!(done.status, "Unknown");
    }
}

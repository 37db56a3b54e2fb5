//! Conversions between the model and the wire, and errors to gRPC statuses.

use stagetime_core::plan::Plan;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::store::{RunRecord, RunState, RunSummary};
use stagetime_core::{Error, ErrorKind};
use tonic::{Code, Status};

use super::v1;

/// The wire form of a run state.
pub fn run_state_to_proto(s: RunState) -> v1::RunState {
    match s {
        RunState::Queued => v1::RunState::Queued,
        RunState::Running => v1::RunState::Running,
        RunState::Succeeded => v1::RunState::Succeeded,
        RunState::Failed => v1::RunState::Failed,
        RunState::Cancelled => v1::RunState::Cancelled,
    }
}

/// The model form of a wire run state (`None` for `UNSPECIFIED`).
pub fn run_state_from_proto(s: v1::RunState) -> Option<RunState> {
    match s {
        v1::RunState::Unspecified => None,
        v1::RunState::Queued => Some(RunState::Queued),
        v1::RunState::Running => Some(RunState::Running),
        v1::RunState::Succeeded => Some(RunState::Succeeded),
        v1::RunState::Failed => Some(RunState::Failed),
        v1::RunState::Cancelled => Some(RunState::Cancelled),
    }
}

/// The wire form of a task status.
pub fn task_status_to_proto(s: TaskStatus) -> v1::TaskStatus {
    match s {
        TaskStatus::Waiting => v1::TaskStatus::Waiting,
        TaskStatus::Ready => v1::TaskStatus::Ready,
        TaskStatus::Running => v1::TaskStatus::Running,
        TaskStatus::Backoff => v1::TaskStatus::Backoff,
        TaskStatus::Succeeded => v1::TaskStatus::Succeeded,
        TaskStatus::Failed => v1::TaskStatus::Failed,
        TaskStatus::TimedOut => v1::TaskStatus::TimedOut,
        TaskStatus::Cancelled => v1::TaskStatus::Cancelled,
        TaskStatus::Skipped => v1::TaskStatus::Skipped,
    }
}

/// The model form of a wire task status (`None` for `UNSPECIFIED`).
pub fn task_status_from_proto(s: v1::TaskStatus) -> Option<TaskStatus> {
    Some(match s {
        v1::TaskStatus::Unspecified => return None,
        v1::TaskStatus::Waiting => TaskStatus::Waiting,
        v1::TaskStatus::Ready => TaskStatus::Ready,
        v1::TaskStatus::Running => TaskStatus::Running,
        v1::TaskStatus::Backoff => TaskStatus::Backoff,
        v1::TaskStatus::Succeeded => TaskStatus::Succeeded,
        v1::TaskStatus::Failed => TaskStatus::Failed,
        v1::TaskStatus::TimedOut => TaskStatus::TimedOut,
        v1::TaskStatus::Cancelled => TaskStatus::Cancelled,
        v1::TaskStatus::Skipped => TaskStatus::Skipped,
    })
}

/// A run with per-stage and per-task status.
///
/// # Errors
/// [`Error::Corrupt`] when the stored spec no longer builds a plan.
pub fn run_to_proto(record: &RunRecord) -> Result<v1::Run, Error> {
    let plan = Plan::build(record.spec.clone()).map_err(|e| {
        Error::corrupt(
            format!("run {}", record.id),
            format!("stored spec is invalid: {e}"),
        )
    })?;
    let states = record.scheduler.tasks();
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, t) in plan.tasks.iter().enumerate() {
        let st = states.get(i);
        let timing = record.timings.get(i).cloned().unwrap_or_default();
        tasks.push(v1::Task {
            name: t.name().to_string(),
            stage: t.stage,
            r#finally: t.is_finally,
            can_fail: t.spec.can_fail,
            status: st
                .map(|s| task_status_to_proto(s.status))
                .unwrap_or(v1::TaskStatus::Unspecified) as i32,
            attempt: st.map(|s| s.attempt).unwrap_or(0),
            retries: t.spec.retries,
            message: st.and_then(|s| s.message.clone()).unwrap_or_default(),
            first_launch_ms: timing.first_launch_ms.unwrap_or(0),
            launch_ms: timing.launch_ms.unwrap_or(0),
            finished_ms: timing.finished_ms.unwrap_or(0),
            handle: timing.handle.unwrap_or_default(),
        });
    }
    let stages = plan
        .stages
        .iter()
        .map(|stage| {
            let mut s = v1::Stage {
                number: stage.number,
                total: stage.members.len() as u32,
                ..v1::Stage::default()
            };
            for &m in &stage.members {
                s.tasks.push(plan.task(m).name().to_string());
                match states.get(m as usize).map(|t| t.status) {
                    Some(TaskStatus::Succeeded) => s.succeeded += 1,
                    Some(TaskStatus::Failed | TaskStatus::TimedOut) => s.failed += 1,
                    Some(TaskStatus::Running | TaskStatus::Backoff) => s.running += 1,
                    _ => {}
                }
            }
            s
        })
        .collect();
    Ok(v1::Run {
        id: record.id.to_string(),
        repo: record.spec.repo.clone(),
        commit: record.spec.commit.clone(),
        state: run_state_to_proto(record.state) as i32,
        version: record.version,
        created_ms: record.created_ms,
        updated_ms: record.updated_ms,
        finished_ms: record.finished_ms.unwrap_or(0),
        author: record.spec.author.clone().unwrap_or_default(),
        branch: record.spec.branch.clone().unwrap_or_default(),
        concurrency_group: record
            .spec
            .options
            .concurrency_group
            .clone()
            .unwrap_or_default(),
        stages,
        tasks,
    })
}

/// The listing view on the wire.
pub(crate) fn summary_to_proto(s: &RunSummary) -> v1::RunSummary {
    v1::RunSummary {
        id: s.id.to_string(),
        repo: s.repo.clone(),
        commit: s.commit.clone(),
        state: run_state_to_proto(s.state) as i32,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        finished_ms: s.finished_ms.unwrap_or(0),
    }
}

/// Maps a core error onto a gRPC status: `Invalid`/`Parse` →
/// `INVALID_ARGUMENT` (the message lists every field path), `NotFound` →
/// `NOT_FOUND`, `Conflict` → `ABORTED`, `AlreadyExists` → `ALREADY_EXISTS`,
/// `Unavailable` → `UNAVAILABLE`, `Forbidden` → `PERMISSION_DENIED`, the
/// rest → `INTERNAL`.
pub(crate) fn status_of(e: &Error) -> Status {
    let code = match e.kind() {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::Corrupt | ErrorKind::Other => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// `INVALID_ARGUMENT` naming one field.
pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

//! Conversions between the model and the wire, and errors to gRPC statuses.

use stagetime_core::error::cut;
use stagetime_core::scheduler::TaskStatus;
use stagetime_core::store::{AttemptTiming, RunId, RunState, RunSummary, TaskTiming};
use stagetime_core::view::{RunView, TaskView};
use stagetime_core::{Error, ErrorKind};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

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

/// A run on the wire: its [`RunView`], translated. Stages are the main
/// stages (finally tasks are marked on each task).
pub fn run_to_proto(run: &RunView) -> v1::Run {
    let tasks = run
        .tasks
        .iter()
        .map(|t| v1::Task {
            name: t.name.clone(),
            stage: t.stage,
            r#finally: t.is_finally(),
            can_fail: t.can_fail,
            status: task_status_to_proto(t.status) as i32,
            attempt: t.attempt,
            retries: t.retries,
            message: t.message.clone().unwrap_or_default(),
            first_launch_ms: t.timing.first_launch_ms.unwrap_or(0),
            launch_ms: t.timing.launch_ms.unwrap_or(0),
            finished_ms: t.timing.finished_ms.unwrap_or(0),
            handle: t.timing.handle.clone().unwrap_or_default(),
            needs: t.needs.clone(),
            lost: t.lost,
            lost_reason: t.lost_reason.clone().unwrap_or_default(),
            attempts: t
                .timing
                .attempts
                .iter()
                .map(|a| v1::Attempt {
                    number: a.number,
                    round: a.round,
                    launch_ms: a.launch_ms,
                    finished_ms: a.finished_ms.unwrap_or(0),
                    status: a
                        .status
                        .map_or(v1::TaskStatus::Unspecified, task_status_to_proto)
                        as i32,
                    message: a.message.clone().unwrap_or_default(),
                    handle: a.handle.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    let stages = run
        .stages
        .iter()
        .filter_map(|s| {
            Some(v1::Stage {
                number: s.number?,
                tasks: s.tasks.clone(),
                succeeded: s.succeeded,
                failed: s.failed,
                running: s.running,
                total: s.total,
            })
        })
        .collect();
    v1::Run {
        id: run.id.to_string(),
        repo: run.repo.clone(),
        commit: run.commit.clone(),
        state: run_state_to_proto(run.state) as i32,
        version: run.version,
        created_ms: run.created_ms,
        updated_ms: run.updated_ms,
        finished_ms: run.finished_ms.unwrap_or(0),
        author: run.author.clone().unwrap_or_default(),
        branch: run.branch.clone().unwrap_or_default(),
        concurrency_group: run.concurrency_group.clone().unwrap_or_default(),
        stages,
        tasks,
    }
}

/// The [`RunView`] of a run as the server sends it; zero times and empty
/// texts mean "not yet" / "none".
///
/// # Errors
/// [`Error::Corrupt`] naming the run when the server sent a malformed id.
pub fn run_from_proto(run: &v1::Run) -> Result<RunView, Error> {
    let nonzero = |ms: u64| (ms != 0).then_some(ms);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let id = RunId::new(run.id.clone())
        .map_err(|e| Error::corrupt_from(format!("run {:?}", run.id), "the server sent it", e))?;
    let tasks = run
        .tasks
        .iter()
        .map(|t| TaskView {
            name: t.name.clone(),
            stage: if t.r#finally {
                None
            } else {
                t.stage.or(Some(0))
            },
            can_fail: t.can_fail,
            retries: t.retries,
            needs: t.needs.clone(),
            status: task_status_from_proto(t.status()).unwrap_or(TaskStatus::Waiting),
            attempt: t.attempt,
            message: text(&t.message),
            lost: t.lost,
            lost_reason: text(&t.lost_reason),
            timing: TaskTiming {
                first_launch_ms: nonzero(t.first_launch_ms),
                launch_ms: nonzero(t.launch_ms),
                finished_ms: nonzero(t.finished_ms),
                handle: text(&t.handle),
                attempts: t
                    .attempts
                    .iter()
                    .map(|a| AttemptTiming {
                        number: a.number,
                        round: a.round,
                        launch_ms: a.launch_ms,
                        finished_ms: nonzero(a.finished_ms),
                        status: task_status_from_proto(a.status()),
                        message: text(&a.message),
                        handle: text(&a.handle),
                    })
                    .collect(),
            },
        })
        .collect();
    let header = RunView {
        id,
        repo: run.repo.clone(),
        commit: run.commit.clone(),
        branch: text(&run.branch),
        author: text(&run.author),
        concurrency_group: text(&run.concurrency_group),
        state: run_state_from_proto(run.state()).unwrap_or(RunState::Queued),
        version: run.version,
        created_ms: run.created_ms,
        updated_ms: run.updated_ms,
        finished_ms: nonzero(run.finished_ms),
        stages: Vec::new(),
        tasks: Vec::new(),
    };
    Ok(RunView::assemble(header, tasks))
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
/// rest (corrupt records, internal errors) → `INTERNAL`.
pub(crate) fn status_of(e: &Error) -> Status {
    let code = match e.kind() {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Forbidden => Code::PermissionDenied,
        _ => Code::Internal,
    };
    match e {
        // The trailer carries a bounded summary; the problems themselves
        // (bounded too) travel as `google.rpc.BadRequest` details.
        Error::Invalid(errors) => {
            // Trailers travel in HTTP/2 headers, which peers cap (16 KiB
            // by default): the details get a byte budget, not just a count.
            let mut budget = MAX_DETAIL_BYTES;
            let violations: Vec<FieldViolation> = errors
                .0
                .iter()
                .take(MAX_DETAILED_PROBLEMS)
                .map(|f| FieldViolation::new(cut(&f.path, 200), cut(&f.message, 300)))
                .take_while(|v| {
                    let size = v.field.len() + v.description.len() + 8;
                    budget = budget.saturating_sub(size);
                    budget > 0
                })
                .collect();
            Status::with_error_details(
                code,
                format!(
                    "invalid revision run ({} problems):\n{}",
                    errors.len(),
                    errors.summary(MAX_MESSAGE_PROBLEMS)
                ),
                ErrorDetails::with_bad_request(violations),
            )
        }
        _ => Status::new(code, cut(&e.to_string(), 2_000)),
    }
}

/// Problems listed in an error's message (the `grpc-message` trailer).
pub(crate) const MAX_MESSAGE_PROBLEMS: usize = 10;
/// Problems sent as status details (at most; see [`MAX_DETAIL_BYTES`]).
pub(crate) const MAX_DETAILED_PROBLEMS: usize = 100;
/// Bytes of problems sent as status details (before base64).
const MAX_DETAIL_BYTES: usize = 6 << 10;

/// `INVALID_ARGUMENT` naming one field.
pub(crate) fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

//! Status predicates: a PipelineRun's `Succeeded` condition as an [`AttemptOutcome`].
//!
//! | `Succeeded` | reason | outcome |
//! |---|---|---|
//! | `True` | any | `Succeeded` |
//! | `False` | `PipelineRunTimeout` | `TimedOut` |
//! | `False` | `Cancelled`, `StoppedRunFinally`, `CancelledRunFinally`, `PipelineRunCancelled` | `Cancelled` |
//! | `False` | anything else | `Failed` |
//! | `Unknown` / absent | | still running (`None`) |
//!
//! Tekton's message is carried into the outcome as `<reason>: <message>`.

use stagetime_core::AttemptOutcome;

use crate::types::{Condition, PipelineRun};

/// Reasons of a `False` condition that mean the run was cancelled.
pub const CANCEL_REASONS: &[&str] = &[
    "Cancelled",
    "StoppedRunFinally",
    "CancelledRunFinally",
    "PipelineRunCancelled",
];

/// The reason of a `False` condition that means the run timed out.
pub const TIMEOUT_REASON: &str = "PipelineRunTimeout";

/// The outcome a `Succeeded` condition states, or `None` while it is
/// `Unknown` (running, pending) or has an unrecognised status.
pub fn condition_outcome(condition: &Condition) -> Option<AttemptOutcome> {
    let reason = condition.reason.as_deref().unwrap_or("");
    let message = || {
        let msg = condition.message.as_deref().unwrap_or("").trim();
        match (reason.is_empty(), msg.is_empty()) {
            (true, true) => "PipelineRun failed".to_string(),
            (true, false) => msg.to_string(),
            (false, true) => reason.to_string(),
            (false, false) => format!("{reason}: {msg}"),
        }
    };
    match condition.status.as_str() {
        "True" => Some(AttemptOutcome::Succeeded),
        "False" if reason == TIMEOUT_REASON => {
            Some(AttemptOutcome::TimedOut { message: message() })
        }
        "False" if CANCEL_REASONS.contains(&reason) => {
            Some(AttemptOutcome::Cancelled { message: message() })
        }
        "False" => Some(AttemptOutcome::Failed { message: message() }),
        _ => None,
    }
}

/// The `Succeeded` condition of a PipelineRun, if it has one.
pub fn succeeded_condition(pr: &PipelineRun) -> Option<&Condition> {
    pr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
}

/// The outcome of a finished PipelineRun; `None` while it runs.
pub fn outcome(pr: &PipelineRun) -> Option<AttemptOutcome> {
    succeeded_condition(pr).and_then(condition_outcome)
}

/// True when the PipelineRun has finished (its `Succeeded` condition is `True` or `False`).
pub fn is_finished(pr: &PipelineRun) -> bool {
    outcome(pr).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{PipelineRunSpec, PipelineRunStatus};

    fn cond(status: &str, reason: Option<&str>, message: Option<&str>) -> Condition {
        Condition {
            type_: "Succeeded".into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            last_transition_time: None,
        }
    }

    #[test]
    fn true_is_success_whatever_the_reason() {
        assert_eq!(
            condition_outcome(&cond("True", Some("Succeeded"), Some("Tasks Completed: 3"))),
            Some(AttemptOutcome::Succeeded)
        );
        assert_eq!(
            condition_outcome(&cond("True", Some("Completed"), None)),
            Some(AttemptOutcome::Succeeded)
        );
    }

    #[test]
    fn false_maps_by_reason_and_carries_the_message() {
        assert_eq!(
            condition_outcome(&cond(
                "False",
                Some("PipelineRunTimeout"),
                Some("PipelineRun \"x\" failed to finish within \"30m0s\"")
            )),
            Some(AttemptOutcome::TimedOut {
                message: "PipelineRunTimeout: PipelineRun \"x\" failed to finish within \"30m0s\""
                    .into()
            })
        );
        for r in [
            "Cancelled",
            "StoppedRunFinally",
            "CancelledRunFinally",
            "PipelineRunCancelled",
        ] {
            assert_eq!(
                condition_outcome(&cond("False", Some(r), Some("by user"))),
                Some(AttemptOutcome::Cancelled {
                    message: format!("{r}: by user")
                }),
                "{r}"
            );
        }
        assert_eq!(
            condition_outcome(&cond(
                "False",
                Some("Failed"),
                Some("Tasks Completed: 2 (Failed: 1)")
            )),
            Some(AttemptOutcome::Failed {
                message: "Failed: Tasks Completed: 2 (Failed: 1)".into()
            })
        );
        assert_eq!(
            condition_outcome(&cond("False", Some("CouldntGetPipeline"), None)),
            Some(AttemptOutcome::Failed {
                message: "CouldntGetPipeline".into()
            })
        );
        assert_eq!(
            condition_outcome(&cond("False", None, None)),
            Some(AttemptOutcome::Failed {
                message: "PipelineRun failed".into()
            })
        );
        assert_eq!(
            condition_outcome(&cond("False", None, Some("boom"))),
            Some(AttemptOutcome::Failed {
                message: "boom".into()
            })
        );
    }

    #[test]
    fn unknown_is_running() {
        assert_eq!(
            condition_outcome(&cond(
                "Unknown",
                Some("Running"),
                Some("Tasks Completed: 1")
            )),
            None
        );
        assert_eq!(
            condition_outcome(&cond("Unknown", Some("PipelineRunPending"), None)),
            None
        );
        assert_eq!(condition_outcome(&cond("", None, None)), None);
    }

    #[test]
    fn only_the_succeeded_condition_counts() {
        let mut pr = PipelineRun::new("x", PipelineRunSpec::default());
        assert_eq!(outcome(&pr), None, "no status yet");
        pr.status = Some(PipelineRunStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                ..cond("False", Some("Failed"), None)
            }],
            ..Default::default()
        });
        assert!(!is_finished(&pr));
        if let Some(s) = pr.status.as_mut() {
            s.conditions.push(cond("True", None, None));
        }
        assert!(is_finished(&pr));
        assert_eq!(outcome(&pr), Some(AttemptOutcome::Succeeded));
    }
}

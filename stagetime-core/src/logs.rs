//! Task logs: what one attempt of a task wrote, as a stream of chunks.
//!
//! Every edge that shows logs (the `logs` gRPC stream and CLI command, the
//! web page, forge reports) reads them through one [`LogSource`]; where the
//! bytes come from (a local child's output, a Tekton pod's containers, the
//! archived tail kept in the store after housekeeping) is the source's
//! business, not the reader's.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::{Result, RunId};

/// Which logs to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// The run.
    pub run: RunId,
    /// One task, or every task of the run (in stage order) when `None`.
    pub task: Option<String>,
    /// One attempt (1-based), or the latest attempt when `None`.
    pub attempt: Option<u32>,
    /// Keep the stream open while the attempt runs, ending it when the
    /// attempt ends; without it the stream ends with what exists now.
    pub follow: bool,
}

impl LogQuery {
    /// Every task's latest attempt, not following.
    pub fn run(run: RunId) -> Self {
        Self {
            run,
            task: None,
            attempt: None,
            follow: false,
        }
    }

    /// One task's latest attempt, not following.
    pub fn task(run: RunId, task: impl Into<String>) -> Self {
        Self {
            run,
            task: Some(task.into()),
            attempt: None,
            follow: false,
        }
    }
}

/// A piece of one attempt's output, in order within that attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The task that wrote it.
    pub task: String,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The step (a Tekton step's container, `taskrun/step`), when the
    /// backend has steps.
    pub step: Option<String>,
    /// The text: whole lines where the source can tell, UTF-8 (invalid bytes
    /// replaced).
    pub text: String,
}

/// Where logs are read from. Object safe, so edges hold `Arc<dyn LogSource>`.
#[async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// Opens the logs `query` selects. Read-only and repeatable: opening the
    /// same query twice yields the same chunks (plus, when following, what
    /// was written since).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown run, task or attempt;
    /// [`crate::Error::Unsupported`] when this source cannot read that
    /// attempt's logs; [`crate::Error::Unavailable`] when where they live
    /// cannot be reached now. Errors inside the stream end it.
    async fn open(&self, query: LogQuery) -> Result<BoxStream<'static, Result<LogChunk>>>;
}

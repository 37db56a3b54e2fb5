//! The one error type of stagetime-core, classified where errors are born.

use std::fmt;

/// One problem found in an input document, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the problem is, e.g. `tasks[2].needs[0]`.
    pub path: String,
    /// What is wrong, e.g. `unknown task "imgae"`.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one input, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// Records one more problem.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The first `max` problems, one per line, each cut to 300 characters,
    /// then how many more there are: a bounded text for transports and
    /// terminals whatever the input was (5,000 bad names stay readable).
    pub fn summary(&self, max: usize) -> String {
        let mut out = String::new();
        for (i, e) in self.0.iter().take(max).enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&cut(&e.to_string(), 300));
        }
        if self.0.len() > max {
            out.push_str(&format!("\n… and {} more problems", self.0.len() - max));
        }
        out
    }

    /// `Ok(value)` when no problem was recorded, otherwise [`Error::Invalid`].
    pub fn into_result<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Invalid(self))
        }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// How an error should be treated by whoever receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is wrong; retrying will not help.
    Invalid,
    /// The thing asked for does not exist.
    NotFound,
    /// The thing to create already exists (and is not the same thing).
    AlreadyExists,
    /// Someone else changed the thing first (optimistic concurrency).
    Conflict,
    /// A dependency (Redis, the cluster, a process) is unavailable; retry later.
    Unavailable,
    /// Stored data could not be understood; affects that one record only.
    Corrupt,
    /// Refused for lack of permission.
    Forbidden,
    /// A bug or an unexpected state of ours (see [`Error::Internal`]);
    /// permanent.
    Other,
}

/// The cause of an error, kept for [`std::error::Error::source`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error type of stagetime-core and of the `Store`/`Backend` traits.
///
/// One enum serves the core and every adapter (stagetime-redis,
/// stagetime-kube) because the engine must classify errors of any store or
/// backend the same way: adapters build these where their errors are born,
/// so that the engine can decide by [`Error::kind`] whether to retry, skip
/// or give up, and keep the adapter's error as the [`source`] where there
/// is one. Match on [`Error::kind`] rather than on variants: more may come.
///
/// [`source`]: std::error::Error::source
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A document could not be read (syntax, unknown key, wrong type).
    #[error("cannot read {what}: {message}")]
    Parse {
        /// What was being read, e.g. a file name.
        what: String,
        /// The parser's message, including the key and position.
        message: String,
    },
    /// The input was read but breaks the rules; every problem is listed.
    #[error("invalid revision run:\n{0}")]
    Invalid(FieldErrors),
    /// A run, task or object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// An object exists already and is not the one we would create.
    #[error("{what} already exists: {message}")]
    AlreadyExists {
        /// The object.
        what: String,
        /// Why it cannot be adopted.
        message: String,
    },
    /// Optimistic concurrency failed: someone changed the object first
    /// (see [`Error::version_conflict`] for stores).
    #[error("conflict on {what}: {detail}")]
    Conflict {
        /// The object.
        what: String,
        /// What differed, e.g. `expected version 3, found 4`.
        detail: String,
    },
    /// A service we depend on is unavailable; the operation may be retried.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        /// Which service (redis, kubernetes, process).
        service: String,
        /// What happened.
        message: String,
        /// The adapter's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A setting (a URL, a token, a certificate path) is wrong; nothing was
    /// attempted.
    #[error("invalid setting {setting}: {message}")]
    Config {
        /// The setting, as its flag or field is called (`redis_url`, `server`).
        setting: String,
        /// What is wrong with it.
        message: String,
    },
    /// A bug or an unexpected state of ours (e.g. a panic caught while
    /// processing a run); not the caller's fault, not worth retrying.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
    /// Stored data is malformed or of a foreign version.
    #[error("corrupt record {what}: {message}")]
    Corrupt {
        /// The record.
        what: String,
        /// What is wrong with it.
        message: String,
        /// The decoder's or validator's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Permission denied.
    #[error("forbidden: {message}")]
    Forbidden {
        /// What must be allowed, e.g. the verb and resource RBAC must grant.
        message: String,
    },
    /// The backend cannot run this task (e.g. no `command` for the local backend).
    #[error("unsupported: {message}")]
    Unsupported {
        /// Why.
        message: String,
    },
    /// Local IO failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Classifies the error for retry decisions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse { .. }
            | Error::Invalid(_)
            | Error::Unsupported { .. }
            | Error::Config { .. } => ErrorKind::Invalid,
            Error::Internal { .. } => ErrorKind::Other,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorKind::Forbidden,
                _ => ErrorKind::Unavailable,
            },
        }
    }

    /// True when trying the same operation again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable | ErrorKind::Conflict)
    }

    /// [`Error::Conflict`] of a versioned store: the writer read version
    /// `expected`, the store holds `found`.
    pub fn version_conflict(what: impl Into<String>, expected: u64, found: u64) -> Self {
        Error::Conflict {
            what: what.into(),
            detail: format!("expected version {expected}, found {found}"),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// Shorthand for [`Error::Unavailable`] without a cause.
    pub fn unavailable(service: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Unavailable {
            service: service.into(),
            message: message.to_string(),
            source: None,
        }
    }

    /// [`Error::Unavailable`] keeping `source` as the cause; the message
    /// says what was being done (the cause's text follows in a report).
    pub fn unavailable_from(
        service: impl Into<String>,
        message: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Error::Unavailable {
            service: service.into(),
            message: format!("{message}: {source}"),
            source: Some(source),
        }
    }

    /// Shorthand for [`Error::Corrupt`] without a cause.
    pub fn corrupt(what: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            message: message.to_string(),
            source: None,
        }
    }

    /// [`Error::Corrupt`] keeping `source` as the cause.
    pub fn corrupt_from(
        what: impl Into<String>,
        message: impl fmt::Display,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Error::Corrupt {
            what: what.into(),
            message: format!("{message}: {source}"),
            source: Some(source),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(setting: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Config {
            setting: setting.into(),
            message: message.to_string(),
        }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(message: impl fmt::Display) -> Self {
        Error::Internal {
            message: message.to_string(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

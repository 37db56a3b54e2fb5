//! How every binary's process runs: `main`, its exit status, shutdown, and
//! what it gets from its command line and the network before it works.
//!
//! - [`run_main`] sets up logging, runs the binary's async body on a
//!   multi-threaded runtime and turns a [`Failure`] into the exit status
//!   (2: bad settings, 3: something unavailable);
//! - [`Shutdown`] hands out any number of futures that resolve on
//!   SIGTERM/SIGINT ([`shutdown_signal`]);
//! - [`bind`] binds a listen address, failing with the exit status 3;
//! - [`parse_duration`] is the `clap` value parser of durations (`30s`, `1h`);
//! - [`write_stdout`] prints as Unix tools do: a reader that went away
//!   (`stagetime plan F --output json | head`) ends the process quietly.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::telemetry::{LogFormat, init_logging, init_logging_from};

/// Why a binary stops early: the exit status and the message it logs.
///
/// [`From<stagetime::Error>`](crate::Error) maps bad input
/// ([`ErrorKind::Invalid`](crate::ErrorKind::Invalid)) to
/// [`Failure::INVALID`] and everything else to [`Failure::UNAVAILABLE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit status.
    pub code: u8,
    /// What went wrong, logged and printed to stderr as `error: MESSAGE`.
    pub message: String,
}

impl Failure {
    /// Exit status for bad settings or input.
    pub const INVALID: u8 = 2;
    /// Exit status when something needed (a store, the cluster, a port) is
    /// unavailable.
    pub const UNAVAILABLE: u8 = 3;

    /// Bad settings or input: exit status 2.
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: Self::INVALID,
            message: message.into(),
        }
    }

    /// Something needed is unavailable: exit status 3.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            code: Self::UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        let code = if e.kind() == crate::ErrorKind::Invalid {
            Self::INVALID
        } else {
            Self::UNAVAILABLE
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A binary's `main`: installs logging in `log_format`, runs `body` to
/// completion on a multi-threaded runtime and returns the exit status:
/// success for `Ok`, the failure's code (after logging its message and
/// printing `error: MESSAGE` to stderr) for `Err`, 3 when the runtime cannot
/// start.
///
/// ```no_run
/// use std::process::ExitCode;
/// use stagetime::runtime::{Failure, run_main};
/// use stagetime::telemetry::LogFormat;
///
/// async fn run() -> Result<(), Failure> {
///     Err(Failure::invalid("--port: not a number"))
/// }
///
/// fn main() -> ExitCode {
///     run_main(LogFormat::Text, run())
/// }
/// ```
pub fn run_main<T: ExitStatus>(
    log_format: LogFormat,
    body: impl Future<Output = Result<T, Failure>>,
) -> ExitCode {
    init_logging(log_format);
    run_to_exit(body)
}

/// A command-line tool's `main`: like [`run_main`], but quiet by default
/// (warnings only; `STAGETIME_LOG` sets the filter, e.g. `debug`) and the
/// body's `u8` is the exit status (e.g. 1: the run failed).
pub fn run_cli<T: ExitStatus>(
    log_format: LogFormat,
    body: impl Future<Output = Result<T, Failure>>,
) -> ExitCode {
    init_logging_from(log_format, "STAGETIME_LOG", "warn");
    run_to_exit(body)
}

/// What a successful `main` body ends with: nothing (exit 0) or a status.
pub trait ExitStatus {
    /// The process exit status.
    fn exit_code(self) -> ExitCode;
}

impl ExitStatus for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl ExitStatus for u8 {
    fn exit_code(self) -> ExitCode {
        ExitCode::from(self)
    }
}

fn run_to_exit<T: ExitStatus>(body: impl Future<Output = Result<T, Failure>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(Failure::UNAVAILABLE);
        }
    };
    match runtime.block_on(body) {
        Ok(status) => status.exit_code(),
        Err(Failure { code, message }) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Parses a duration such as `30s`, `5m` or `1h 30m` (the `humantime`
/// format), for `clap`'s `value_parser`.
///
/// # Errors
/// Why the text is not a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// The exit status of a process whose stdout reader went away: what a shell
/// reports for a tool killed by SIGPIPE (128 + 13).
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// Writes `text` to stdout and flushes it. When the reader went away
/// (EPIPE: `... | head` read enough), the process ends at once, quietly,
/// with [`EXIT_BROKEN_PIPE`], as a Unix tool killed by SIGPIPE does —
/// Rust ignores SIGPIPE, and `print!` would panic instead. Other write
/// errors are ignored (there is nowhere left to report them).
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(i32::from(EXIT_BROKEN_PIPE));
    }
}

/// A cloneable handle on the process's shutdown: every [`Shutdown::wait`]
/// future resolves once the trigger (by default [`shutdown_signal`]) has.
///
/// The waits also resolve when the task watching the trigger is gone (the
/// runtime shutting down), so nothing waits forever.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stopped: watch::Receiver<bool>,
}

impl Shutdown {
    /// Shutdown on SIGTERM or SIGINT ([`shutdown_signal`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the task watching the signals).
    pub fn on_signal() -> Self {
        Self::on(shutdown_signal())
    }

    /// Shutdown once `trigger` resolves.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the task awaiting `trigger`).
    pub fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        let (stop_tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = stop_tx.send(true);
        });
        Shutdown { stopped }
    }

    /// A future resolving once shutdown began (at once if it already has).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    /// Runs `work` unless shutdown begins first: `Some` of its output, or
    /// `None` (dropping `work`) on shutdown. For what a binary does before
    /// it serves, such as connecting to its store.
    pub async fn unless<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            _ = self.wait() => None,
        }
    }
}

/// Binds a TCP listener on `listen` (`HOST:PORT`; port 0 picks one) and
/// returns it with the address it got.
///
/// # Errors
/// [`Failure::UNAVAILABLE`] naming `listen` when it cannot be bound.
pub async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr), Failure> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::unavailable(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::unavailable(e.to_string()))?;
    Ok((listener, addr))
}

/// Resolves when the process receives SIGTERM (Kubernetes stopping a pod) or
/// SIGINT (Ctrl-C).
///
/// If the handlers cannot be installed it logs why and resolves on Ctrl-C
/// alone, so a binary never stops by surprise.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failure_maps_invalid_errors_to_2_and_others_to_3() {
        let mut errors = crate::FieldErrors::default();
        errors.push("repo", "required");
        let invalid = Failure::from(crate::Error::Invalid(errors));
        assert_eq!(invalid.code, 2);
        assert!(invalid.message.contains("repo"), "{invalid}");
        let down = Failure::from(crate::Error::unavailable("redis", "connection refused"));
        assert_eq!(down.code, 3);
        assert!(down.message.contains("connection refused"), "{down}");
        assert_eq!(Failure::invalid("x").code, Failure::INVALID);
        assert_eq!(Failure::unavailable("x").code, Failure::UNAVAILABLE);
    }

    #[test]
    fn run_main_exits_with_the_failure_code() {
        assert_eq!(
            run_main(LogFormat::Text, async { Ok(()) }),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_main(LogFormat::Text, async {
                Err::<(), _>(Failure::invalid("bad"))
            }),
            ExitCode::from(2)
        );
        assert_eq!(
            run_main(LogFormat::Text, async {
                Err::<(), _>(Failure::unavailable("down"))
            }),
            ExitCode::from(3)
        );
    }

    #[test]
    fn durations_parse_in_the_humantime_format() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        let err = parse_duration("soon").unwrap_err();
        assert!(!err.is_empty());
    }

    #[tokio::test]
    async fn shutdown_wakes_every_waiter_and_later_ones_at_once() {
        let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::on(async move {
            let _ = triggered.await;
        });
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.clone().wait()))
            .collect();
        let pending = shutdown.unless(std::future::pending::<()>());
        tokio::pin!(pending);
        tokio::select! {
            _ = &mut pending => panic!("shutdown began before the trigger"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert!(waiters.iter().all(|w| !w.is_finished()));
        trigger.send(()).unwrap();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
        assert_eq!(pending.await, None, "unless gives up on shutdown");
        tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .expect("a wait after shutdown resolves at once");
        let never = Shutdown::on(std::future::pending());
        assert_eq!(never.unless(async { 7 }).await, Some(7));
    }

    #[tokio::test]
    async fn bind_names_the_address_it_cannot_use() {
        let (_taken, addr) = bind("127.0.0.1:0").await.unwrap();
        let err = bind(&addr.to_string()).await.unwrap_err();
        assert_eq!(err.code, 3);
        assert!(
            err.message
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }
}

//! Classification of Redis errors into stagetime errors, where they are born.

use redis::{ErrorKind as RK, RedisError, ServerErrorKind as SK};
use stagetime_core::Error;

/// Turns a Redis error met while working on `what` (e.g. `run abc`) into an
/// [`Error`] the engine can act on:
///
/// - connection failures, timeouts, `LOADING`, `BUSY`, `TRYAGAIN`,
///   `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `MISCONF`, `OOM`, `NOSCRIPT`
///   and anything not understood → [`Error::Unavailable`] (retry later);
/// - `WRONGTYPE` (a key of ours holds something else) and unreadable replies
///   → [`Error::Corrupt`] for `what` only;
/// - refused authentication or permission → [`Error::Forbidden`];
/// - a malformed URL or client setting → [`Error::Config`].
pub fn classify(e: RedisError, what: &str) -> Error {
    let code = e.code().unwrap_or("");
    let text = e.to_string();
    match e.kind() {
        RK::InvalidClientConfig => Error::config("redis_url", &e),
        RK::AuthenticationFailed | RK::Server(SK::NoPerm) => Error::Forbidden {
            message: format!("redis refused access ({what}): {e}"),
        },
        RK::Parse | RK::UnexpectedReturnType => {
            Error::corrupt(what, format!("unreadable reply from redis: {e}"))
        }
        _ if code == "WRONGTYPE" || text.contains("WRONGTYPE") => {
            Error::corrupt(what, format!("a key holds data of the wrong type: {e}"))
        }
        _ if code == "NOAUTH"
            || code == "WRONGPASS"
            || ["NOAUTH", "WRONGPASS", "Authentication required"]
                .iter()
                .any(|m| text.contains(m)) =>
        {
            Error::Forbidden {
                message: format!("redis refused access ({what}): {e}"),
            }
        }
        _ => Error::unavailable("redis", format!("{what}: {e}")),
    }
}

/// Shorthand used throughout the crate.
pub(crate) fn unavailable_reply(what: &str, message: impl std::fmt::Display) -> Error {
    Error::unavailable("redis", format!("{what}: unexpected reply: {message}"))
}

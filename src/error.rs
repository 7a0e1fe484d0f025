//! The error type of the sandbox API (the lowest floor: it imports only the description types).

use crate::outcome::SetupFailure;
use crate::policy::PolicyError;

/// Errors of the sandbox API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The sandbox could not be built or the program not started.
    #[error("{0}")]
    Setup(SetupFailure),
    /// The requested backend is not available.
    #[error("backend {0} is not available: {1}")]
    Backend(&'static str, String),
    /// The API was used in a way it cannot honour (the message says how to use it instead).
    #[error("{0}")]
    Usage(&'static str),
    /// Waiting for or talking to the sandbox failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

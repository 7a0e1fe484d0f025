//! The async forms of `Sandbox::spawn`, `output` and `status` (cargo feature `tokio`); the child they give is
//! [`AsyncChild`] (`running/aio.rs`).

use crate::command::{Sandbox, Stdio};
use crate::error::Error;
use crate::outcome::Outcome;
use crate::running::aio::AsyncChild;

/// The async forms of [`Sandbox::spawn`], [`Sandbox::output`] and [`Sandbox::status`] (cargo feature
/// `tokio`). The builder is cloned into the start, so it stays usable, as with the blocking forms.
///
/// ```no_run
/// # async fn f() -> Result<(), sandkasten::Error> {
/// use sandkasten::{OutputLimit, Sandbox, Status};
/// let outcome = Sandbox::new("/bin/echo")
///     .arg("hi")
///     .output_limits(OutputLimit::truncate(1 << 20), OutputLimit::truncate(64 << 10))
///     .output_async()
///     .await?;
/// assert_eq!(outcome.status, Status::Exited(0));
/// assert_eq!(outcome.stdout, b"hi\n");
/// # Ok(()) }
/// ```
impl Sandbox {
    /// Starts the program (on tokio's blocking pool) and returns a child driven by the reactor. Standard
    /// streams are inherited unless set. A sandbox that cannot be set up is a child that has already ended,
    /// as with [`spawn`](Sandbox::spawn). Dropping the future before it is ready kills what was started.
    pub async fn spawn_async(&mut self) -> Result<AsyncChild, Error> {
        self.start_async(false).await
    }

    /// Runs the program to the end with stdout and stderr captured within their limits (stdin is null
    /// unless set), as [`output`](Sandbox::output) does.
    pub async fn output_async(&mut self) -> Result<Outcome, Error> {
        self.start_async(true).await?.wait_with_output().await
    }

    /// Runs the program to the end with inherited streams (unless set) and returns the verdict.
    pub async fn status_async(&mut self) -> Result<Outcome, Error> {
        self.start_async(false).await?.wait().await
    }

    async fn start_async(&mut self, capture: bool) -> Result<AsyncChild, Error> {
        let mut cmd = self.clone();
        let started = tokio::task::spawn_blocking(move || {
            if capture {
                cmd.spawn_with_defaults(|| Stdio::Null, || Stdio::Piped)
            } else {
                cmd.spawn()
            }
        })
        .await
        .map_err(|e| Error::Io {
            what: "the blocking task that starts the sandbox",
            source: std::io::Error::other(e),
        })??;
        AsyncChild::new(started)
    }
}

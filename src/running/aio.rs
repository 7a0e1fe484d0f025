//! The async API (cargo feature `tokio`): a running sandbox whose end and streams are driven by tokio's
//! reactor. No thread waits per child: the end-of-run descriptor ([`SandboxChild`]'s `AsFd`: the namespace
//! run's pidfd, a VM run's channel) and the stdio pipes are registered with the reactor. Starting a
//! sandbox is blocking work (namespaces and mounts, or a VM taken from a pool or launched), done on tokio's
//! blocking pool, one task for the length of the start (`Sandbox::spawn_async` and its kin, in
//! `command/aio.rs`).

use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::backend::BootWatch;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::running::{Kept, SandboxChild};

/// The program's standard input, when piped: `tokio::io::AsyncWrite`. Drop it to close the program's stdin.
pub type ChildStdin = pipe::Sender;
/// The program's standard output, when piped: `tokio::io::AsyncRead`.
pub type ChildStdout = pipe::Receiver;
/// The program's standard error, when piped: `tokio::io::AsyncRead`.
pub type ChildStderr = pipe::Receiver;

/// A running sandbox on either backend, for async code: `tokio::process::Child`'s shape. Dropping it (or a
/// future that owns it) kills the whole process tree (for the VM backend: the VM, or the pool's run).
///
/// Needs a tokio runtime with IO enabled, and time too when the policy has a timeout (the host's backstop
/// deadline is a timer).
#[derive(Debug)]
pub struct AsyncChild {
    /// The program's standard input, when piped.
    pub stdin: Option<ChildStdin>,
    /// The program's standard output, when piped.
    pub stdout: Option<ChildStdout>,
    /// The program's standard error, when piped.
    pub stderr: Option<ChildStderr>,
    child: SandboxChild,
    /// The child's end-of-run descriptor (a duplicate), registered with the reactor.
    end: AsyncFd<OwnedFd>,
}

impl AsyncChild {
    /// Drives a child started with [`Sandbox::spawn`](crate::Sandbox::spawn) from async code. Call it inside a tokio runtime
    /// with IO enabled (else an [`Error::Usage`]).
    pub fn new(mut child: SandboxChild) -> Result<AsyncChild, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Usage(
                "an AsyncChild is driven by a tokio runtime: create it inside one (Runtime::block_on, or \
                 a task), with IO enabled",
            ));
        }
        let end = child
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| {
                // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open, names the same file
                // description and gives the same number until the AsyncFd is dropped.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(Into::into)
            })
            .map_err(|source| Error::Io {
                what: "registering the sandbox's end-of-run descriptor with tokio's reactor",
                source,
            })?;
        let stream_err = |source| Error::Io {
            what: "registering a stdio pipe of the sandbox with tokio's reactor",
            source,
        };
        let stdin = match child.stdin.take() {
            Some(p) => Some(pipe::Sender::from_owned_fd(p.into()).map_err(stream_err)?),
            None => None,
        };
        let stdout = match child.stdout.take() {
            Some(p) => Some(pipe::Receiver::from_owned_fd(p.into()).map_err(stream_err)?),
            None => None,
        };
        let stderr = match child.stderr.take() {
            Some(p) => Some(pipe::Receiver::from_owned_fd(p.into()).map_err(stream_err)?),
            None => None,
        };
        Ok(AsyncChild {
            stdin,
            stdout,
            stderr,
            child,
            end,
        })
    }

    /// The host pid of the sandbox's root process (see [`SandboxChild::id`]).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// For a cold VM run, a handle that tells when its guest has booted.
    pub fn boot_watch(&self) -> Option<BootWatch> {
        self.child.boot_watch()
    }

    /// Kills the whole process tree (never blocks); [`wait`](Self::wait) then gives the verdict.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.child.kill()
    }

    /// Sends `signal` to the program (see [`SandboxChild::signal`]).
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        self.child.signal(signal)
    }

    /// The verdict if the sandbox has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<Outcome>, Error> {
        self.child.try_wait()
    }

    /// Waits for the end (enforcing the host's backstop deadline) and returns the verdict. Closes stdin;
    /// piped stdout and stderr are left open. Cancel-safe: dropping the future leaves the child running.
    pub async fn wait(&mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        loop {
            if let Some(outcome) = self.child.try_wait()? {
                return Ok(outcome);
            }
            self.end_or_deadline().await?;
        }
    }

    /// Waits for the end while collecting stdout and stderr, each up to its
    /// [`OutputLimit`](crate::OutputLimit), as [`SandboxChild::wait_with_output`] does.
    pub async fn wait_with_output(mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        let mut kept = Kept::new(self.child.limits());
        let mut streams = [self.stdout.take(), self.stderr.take()];
        let watch_end = self.child.streams_outlive();
        let mut bufs = [vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]];
        while streams.iter().any(Option::is_some) {
            if watch_end && self.child.try_wait()?.is_some() {
                // A session's command ended: what it wrote is read, not what its session's processes write
                // later into the same streams.
                for (which, s) in streams.iter_mut().enumerate() {
                    let Some(r) = s.take() else { continue };
                    loop {
                        match r.try_read(&mut bufs[which]) {
                            Ok(0) => break,
                            Ok(n) => {
                                if kept.take(which, &bufs[which][..n], self.child.killed()) {
                                    self.child.kill()?;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(read_error(e)),
                        }
                    }
                }
                break;
            }
            let [out_buf, err_buf] = &mut bufs;
            let [out, err] = &mut streams;
            let deadline = self.child.remaining().filter(|_| !self.child.killed());
            let (which, read) = tokio::select! {
                r = read_some(out.as_mut(), out_buf), if out.is_some() => (0, r),
                r = read_some(err.as_mut(), err_buf), if err.is_some() => (1, r),
                r = self.end.readable(), if watch_end => {
                    r.map_err(wait_error)?.clear_ready();
                    continue;
                }
                () = sleep(deadline), if deadline.is_some() => {
                    // The sandbox overran its own limit: try_wait takes it down; the pipes then close.
                    self.child.try_wait()?;
                    continue;
                }
            };
            match read {
                Ok(0) => streams[which] = None,
                Ok(n) => {
                    if kept.take(which, &bufs[which][..n], self.child.killed()) {
                        self.child.kill()?;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        let outcome = self.wait().await?;
        Ok(kept.into_outcome(outcome))
    }

    /// Until the end-of-run descriptor is readable or the host's deadline passes (the caller then asks
    /// `try_wait`, which kills at the deadline).
    async fn end_or_deadline(&mut self) -> Result<(), Error> {
        let deadline = self.child.remaining().filter(|_| !self.child.killed());
        tokio::select! {
            r = self.end.readable() => {
                // Readiness is cleared before `try_wait` takes what made the descriptor readable: an event
                // that comes after this point is a new one and wakes the next wait.
                r.map_err(wait_error)?.clear_ready();
            }
            () = sleep(deadline), if deadline.is_some() => {}
        }
        Ok(())
    }
}

async fn read_some(r: Option<&mut ChildStdout>, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn read_error(source: std::io::Error) -> Error {
    Error::Io {
        what: "reading the sandbox's output",
        source,
    }
}

fn wait_error(source: std::io::Error) -> Error {
    Error::Io {
        what: "waiting on the sandbox's end-of-run descriptor",
        source,
    }
}

//! `SandboxChild`: a running sandbox on either backend, shaped like `std::process::Child`.

use std::io::{PipeReader, PipeWriter, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::backend::{BootWatch, Run};
use crate::error::Error;
use crate::namespace::sys;
use crate::outcome::{Capture, Outcome, OutputLimit};

#[cfg(feature = "tokio")]
pub(crate) mod aio;

/// A running sandbox. Dropping it kills the whole process tree (for the VM backend: the VM).
#[derive(Debug)]
pub struct SandboxChild {
    /// The program's standard input, when piped.
    pub stdin: Option<PipeWriter>,
    /// The program's standard output, when piped.
    pub stdout: Option<PipeReader>,
    /// The program's standard error, when piped.
    pub stderr: Option<PipeReader>,
    inner: Option<Box<dyn Run>>,
    started: Instant,
    /// When the host stops waiting for the sandbox's own limit and kills it.
    deadline: Option<Duration>,
    killed: bool,
    done: Option<Outcome>,
    /// Always readable: what [`AsFd`] gives once the verdict is in.
    ended_fd: OwnedFd,
    /// What `wait_with_output` keeps of stdout and stderr.
    limits: [OutputLimit; 2],
}

impl SandboxChild {
    pub(crate) fn new(
        inner: Box<dyn Run>,
        started: Instant,
        deadline: Option<Duration>,
        streams: (Option<PipeWriter>, Option<PipeReader>, Option<PipeReader>),
        limits: [OutputLimit; 2],
    ) -> Result<Self, Error> {
        let ended_fd = match readable_eventfd() {
            Ok(fd) => fd,
            Err(e) => {
                inner.abort();
                return Err(e);
            }
        };
        Ok(SandboxChild {
            stdin: streams.0,
            stdout: streams.1,
            stderr: streams.2,
            inner: Some(inner),
            started,
            deadline,
            killed: false,
            done: None,
            ended_fd,
            limits,
        })
    }

    /// A child that ended before it ran: its sandbox could not be set up (`outcome` says why). Its piped
    /// streams are at EOF.
    pub(crate) fn ended(
        outcome: Outcome,
        started: Instant,
        streams: (Option<PipeWriter>, Option<PipeReader>, Option<PipeReader>),
        limits: [OutputLimit; 2],
    ) -> Result<Self, Error> {
        Ok(SandboxChild {
            stdin: streams.0,
            stdout: streams.1,
            stderr: streams.2,
            inner: None,
            started,
            deadline: None,
            killed: false,
            done: Some(outcome),
            ended_fd: readable_eventfd()?,
            limits,
        })
    }

    /// The host pid of the sandbox's root process: the namespace sandbox's init (PID 1 inside), or QEMU.
    pub fn id(&self) -> u32 {
        self.inner.as_ref().map_or(0, |r| r.pid())
    }

    /// For a cold VM run, a handle that tells when its guest has booted; `None` on the namespace backend and
    /// for runs on a warm VM (already booted).
    pub fn boot_watch(&self) -> Option<BootWatch> {
        self.inner.as_ref().and_then(|r| r.boot_watch())
    }

    /// Kills the whole process tree.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(inner) = &self.inner {
            self.killed = true;
            inner.kill().map_err(|e| Error::Io {
                what: "pidfd_send_signal(SIGKILL)",
                source: std::io::Error::from_raw_os_error(e),
            })?;
        }
        Ok(())
    }

    /// Sends `signal` to the program (the namespace sandbox's init forwards it). The VM backend does not
    /// forward signals yet: only SIGKILL (which ends the VM) is accepted there.
    pub fn signal(&mut self, signal: i32) -> Result<(), Error> {
        match &self.inner {
            Some(inner) if signal != libc::SIGKILL && !inner.forwards_signals() => {
                Err(Error::Backend(
                    "vm",
                    format!("signal {signal} cannot be forwarded into the VM yet; kill() ends it"),
                ))
            }
            Some(inner) => inner.signal(signal).map_err(|e| Error::Io {
                what: "pidfd_send_signal",
                source: std::io::Error::from_raw_os_error(e),
            }),
            None => Ok(()),
        }
    }

    /// Waits for the end without blocking: `None` while the sandbox still runs.
    pub fn try_wait(&mut self) -> Result<Option<Outcome>, Error> {
        if self.done.is_none() {
            self.poll_exit(Some(Duration::ZERO))?;
        }
        Ok(self.done.clone())
    }

    /// Waits for the end (enforcing the timeout) and returns the verdict. Piped streams are left open.
    pub fn wait(&mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        while self.done.is_none() {
            self.poll_exit(None)?;
        }
        Ok(self.done.clone().expect("set above"))
    }

    /// Waits for the end while collecting stdout and stderr, each up to its [`OutputLimit`] (set with
    /// [`Sandbox::output_limits`](crate::Sandbox::output_limits); what was cut, and whether the program was
    /// killed for it, is in [`Outcome::capture`]). A session's command is done once it ended and what it
    /// wrote was read: a process it left running in the session may hold its streams open.
    pub fn wait_with_output(mut self) -> Result<Outcome, Error> {
        drop(self.stdin.take());
        let mut kept = Kept::new(self.limits);
        let mut streams: Vec<(PipeReader, usize)> = Vec::new();
        if let Some(s) = self.stdout.take() {
            streams.push((s, 0));
        }
        if let Some(s) = self.stderr.take() {
            streams.push((s, 1));
        }
        let watch_end = self.streams_outlive();
        // A page at first, 64 KiB (a pipe's default capacity) once a read fills it: the buffer is written
        // while the sandbox's init still shares the heap's pages copy-on-write, so a program that writes
        // little should not cost 16 page copies.
        let mut buf = vec![0u8; 4096];
        while !streams.is_empty() {
            let ended = watch_end && self.done.is_some();
            let mut pfds: Vec<libc::pollfd> = streams
                .iter()
                .map(|(s, _)| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if watch_end && !ended {
                let fd = self.inner.as_ref().map_or(-1, |r| r.wait_fd().as_raw_fd());
                pfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // Once killed, the streams close shortly: wait for that without spinning. Once a session's
            // command ended, only what is already written is read.
            let wait = match self.remaining() {
                _ if ended => 0,
                _ if self.killed => 50,
                None => -1,
                Some(r) => millis(r),
            };
            let ready = sys::poll(&mut pfds, wait).map_err(|e| Error::Io {
                what: "poll on the sandbox's output",
                source: std::io::Error::from_raw_os_error(e),
            })?;
            if ready == 0 {
                if ended {
                    break;
                }
                // The sandbox overran its own limit: take it down; the pipes then close.
                if !self.killed {
                    self.kill()?;
                }
                continue;
            }
            if pfds.len() > streams.len() && pfds[streams.len()].revents != 0 {
                self.poll_exit(Some(Duration::ZERO))?;
            }
            let mut i = 0;
            while i < streams.len() {
                if pfds[i].revents == 0 {
                    i += 1;
                    continue;
                }
                let (s, which) = &mut streams[i];
                match s.read(&mut buf) {
                    Ok(0) => {
                        streams.remove(i);
                        pfds.remove(i);
                        continue;
                    }
                    Ok(n) => {
                        if kept.take(*which, &buf[..n], self.killed) {
                            self.kill()?;
                        }
                        if n == buf.len() && n < 64 * 1024 {
                            buf.resize(64 * 1024, 0);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(Error::Io {
                            what: "reading the sandbox's output",
                            source: e,
                        });
                    }
                }
                i += 1;
            }
        }
        let outcome = self.wait()?;
        Ok(kept.into_outcome(outcome))
    }

    /// Whether the program's streams may stay open after it ended (a session's command): read them up to
    /// the end of the run, not to end of file.
    pub(crate) fn streams_outlive(&self) -> bool {
        self.inner.as_ref().is_some_and(|r| r.streams_outlive())
    }

    /// What `wait_with_output` keeps of stdout and stderr.
    #[cfg(feature = "tokio")]
    pub(crate) fn limits(&self) -> [OutputLimit; 2] {
        self.limits
    }

    /// Whether the host killed the sandbox (its deadline, an output limit, or `kill`).
    #[cfg(feature = "tokio")]
    pub(crate) fn killed(&self) -> bool {
        self.killed
    }

    /// How long until the host stops waiting for the sandbox's own limit.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_sub(self.started.elapsed()))
    }

    /// Waits up to `limit` (or the deadline) for the sandbox to end; records the verdict when it did.
    fn poll_exit(&mut self, limit: Option<Duration>) -> Result<(), Error> {
        let remaining = self.remaining();
        let Some(inner) = &mut self.inner else {
            return Ok(());
        };
        let wait = match (limit, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut pfd = [libc::pollfd {
            fd: inner.wait_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ready = sys::poll(&mut pfd, wait.map_or(-1, millis)).map_err(|e| Error::Io {
            what: "poll on the sandbox's pidfd",
            source: std::io::Error::from_raw_os_error(e),
        })?;
        if ready == 0 {
            if self.remaining() == Some(Duration::ZERO) {
                self.kill()?;
            }
            return Ok(());
        }
        if !inner.ended() {
            return Ok(());
        }
        let inner = self.inner.take().expect("checked above");
        let host_timeout = self.killed && self.remaining() == Some(Duration::ZERO);
        self.done = Some(inner.finish(self.started.elapsed(), host_timeout)?);
        Ok(())
    }
}

/// An eventfd that is always readable: what [`AsFd`] gives once the verdict is in.
fn readable_eventfd() -> Result<OwnedFd, Error> {
    // SAFETY: eventfd takes two integers; a non-negative result is a new descriptor this process owns.
    let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::Io {
            what: "creating the child's end-of-run eventfd",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created above and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What is kept of stdout (0) and stderr (1) against their limits while they are read.
pub(crate) struct Kept {
    limits: [OutputLimit; 2],
    kept: [Vec<u8>; 2],
    capture: Capture,
}

impl Kept {
    pub(crate) fn new(limits: [OutputLimit; 2]) -> Kept {
        Kept {
            limits,
            kept: [Vec::new(), Vec::new()],
            capture: Capture::default(),
        }
    }

    /// Keeps what fits of `data` read from stream `which`; true when the program must be killed for it now
    /// (a limit that kills was passed, and the host has not killed it already).
    pub(crate) fn take(&mut self, which: usize, data: &[u8], already_killed: bool) -> bool {
        let n = data.len();
        let limit = self.limits[which];
        let (total, truncated) = if which == 0 {
            (
                &mut self.capture.stdout_bytes,
                &mut self.capture.stdout_truncated,
            )
        } else {
            (
                &mut self.capture.stderr_bytes,
                &mut self.capture.stderr_truncated,
            )
        };
        *total += n as u64;
        let room = limit
            .max_bytes
            .saturating_sub(self.kept[which].len() as u64);
        let take = n.min(usize::try_from(room).unwrap_or(usize::MAX));
        self.kept[which].extend_from_slice(&data[..take]);
        if take < n {
            *truncated = true;
            if limit.kill && !already_killed && !self.capture.killed_for_output {
                self.capture.killed_for_output = true;
                return true;
            }
        }
        false
    }

    /// The verdict with what was kept.
    pub(crate) fn into_outcome(self, mut outcome: Outcome) -> Outcome {
        let [out, err] = self.kept;
        outcome.stdout = out;
        outcome.stderr = err;
        outcome.capture = self.capture;
        outcome
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// A descriptor to poll for the end of the run (an event loop's, or `poll(2)`), on every backend: it becomes
/// readable when the run may have ended; then [`SandboxChild::try_wait`] (which never blocks) tells, and
/// takes whatever made it readable without the end (a pooled or session run's channel events), so that
/// the descriptor is not readable again until something new happens. Once the verdict is in, it stays
/// readable. The host's backstop deadline (the policy's timeout plus a grace) is enforced only while someone
/// waits: the sandbox enforces its own timeout either way.
///
/// ```no_run
/// use std::os::fd::{AsFd, AsRawFd};
/// let mut child = sandkasten::Sandbox::new("/bin/true").spawn()?;
/// let outcome = loop {
///     let mut pfd = [libc::pollfd { fd: child.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 }];
///     // SAFETY: one valid pollfd.
///     unsafe { libc::poll(pfd.as_mut_ptr(), 1, -1) };
///     if let Some(outcome) = child.try_wait()? {
///         break outcome;
///     }
/// };
/// # Ok::<(), sandkasten::Error>(())
/// ```
impl AsFd for SandboxChild {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Some(run) if self.done.is_none() => run.wait_fd(),
            _ => self.ended_fd.as_fd(),
        }
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.abort();
        }
    }
}

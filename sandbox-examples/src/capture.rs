//! `coderun`'s bounded output reader: the sandbox's standard output and error are read into [`Capture`]
//! buffers that keep the first bytes of each and count the rest, until both pipes close, the sandbox ends, a
//! stop signal comes, the deadline passes, or standard output goes over its limit (then the sandbox is killed).

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Instant;

use sandkasten::SandboxChild;

use crate::host::{SignalFd, poll, pollin};

/// Why reading ended without the program's output.
pub enum Stop {
    /// A host call failed; the message names it.
    Host(String),
    /// A stop signal (this number) came; the sandbox was killed.
    Interrupted(i32),
}

/// What the sandbox wrote.
pub struct Captured {
    /// Standard output, up to its limit.
    pub out: Capture,
    /// Standard error, up to its limit.
    pub err: Capture,
    /// Standard output went over its limit and the sandbox was killed (OLE).
    pub over: bool,
}

fn host(what: &str) -> impl FnOnce(io::Error) -> Stop + '_ {
    move |e| Stop::Host(format!("{what}: {e}"))
}

/// Reads `child`'s piped stdout and stderr with bounded buffers (`output_limit`, `stderr_limit` bytes kept)
/// until both close, the sandbox ends (the child's descriptor, `AsFd`, readable and `try_wait` says so: on
/// every backend, a pooled VM's runs too), a signal of `signals` comes, or stdout goes over its limit. Past
/// `deadline` (a backstop behind the sandbox's own wall limit) the sandbox is killed.
pub fn read_outputs(
    child: &mut SandboxChild,
    signals: &SignalFd,
    output_limit: usize,
    stderr_limit: usize,
    deadline: Instant,
) -> Result<Captured, Stop> {
    let mut out = Capture::new(output_limit);
    let mut err = Capture::new(stderr_limit);
    let mut pipes: Vec<(io::PipeReader, bool)> = Vec::new();
    pipes.extend(child.stdout.take().map(|p| (p, true)));
    pipes.extend(child.stderr.take().map(|p| (p, false)));
    let mut ended = false;
    let mut over = false;
    let mut buf = vec![0u8; 64 << 10];
    while !(pipes.is_empty() && ended) {
        let mut fds = vec![pollin(signals.fd.as_fd())];
        if !ended {
            fds.push(pollin(child.as_fd()));
        }
        fds.extend(pipes.iter().map(|(p, _)| pollin(p.as_fd())));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || poll(&mut fds, Some(left)).map_err(host("poll"))? == 0 {
            // The sandbox overran its own wall limit: take it down (the verdict says TLE).
            let _ = child.kill();
            break;
        }
        if fds[0].revents != 0 {
            let sig = signals.read().map_err(host("reading a stop signal"))?;
            let _ = child.kill();
            return Err(Stop::Interrupted(sig));
        }
        let first_pipe = if ended { 1 } else { 2 };
        if !ended && fds[1].revents != 0 {
            ended = child
                .try_wait()
                .map_err(|e| Stop::Host(format!("waiting for the sandbox: {e}")))?
                .is_some();
        }
        let mut closed = Vec::new();
        for (i, (pipe, is_out)) in pipes.iter_mut().enumerate() {
            if fds[first_pipe + i].revents == 0 {
                continue;
            }
            match pipe.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) if *is_out => {
                    if out.push(&buf[..n]) {
                        over = true;
                    }
                }
                Ok(n) => {
                    err.push(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Stop::Host(format!("reading the program's output: {e}"))),
            }
        }
        if over {
            let _ = child.kill();
            break;
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }
    }
    Ok(Captured { out, err, over })
}

/// The first `limit` bytes of a stream, and how many bytes there were.
pub struct Capture {
    /// The first `limit` bytes.
    pub data: Vec<u8>,
    /// How many bytes there were.
    pub total: u64,
    limit: usize,
}

impl Capture {
    /// An empty capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Capture {
        Capture {
            data: Vec::new(),
            total: 0,
            limit,
        }
    }

    /// Keeps what fits; true once the stream went over the limit.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        self.total += chunk.len() as u64;
        let room = self.limit - self.data.len();
        self.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated()
    }

    /// Whether the stream went over the limit.
    pub fn truncated(&self) -> bool {
        self.total > self.limit as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Capture;

    #[test]
    fn capture_keeps_the_first_bytes_and_counts_all() {
        let mut c = Capture::new(5);
        assert!(!c.push(b"abc"));
        assert!(!c.push(b"de"));
        assert!(c.push(b"fgh"));
        assert_eq!(c.data, b"abcde");
        assert_eq!(c.total, 8);
        assert!(c.truncated());
    }
}

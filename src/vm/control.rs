//! The host side of a VM's control port and stdin port, for cold runs and warm VMs alike: one reader of the
//! agent's control lines (READY, verdicts), and one relay of the caller's stdin into the guest. Every guest
//! line is bounded; a broken channel is an event, never a hang.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::namespace::sys;
use crate::protocol::frames::{MAX_FRAME, write_frame};
use crate::protocol::{READY_PREFIX, VERDICT_PREFIX};

/// The longest line the host accepts from a guest's control port.
const MAX_LINE: u64 = 1 << 20;

/// What the readers of a VM's channels report.
#[derive(Debug)]
pub(super) enum Event {
    Ready(serde_json::Value),
    Verdict(serde_json::Value),
    /// The end frame of stdout (0) or stderr (1) (served runs only).
    OutputEnd(usize),
    /// A channel ended or broke: the VM is gone or hostile.
    Broken(String),
}

/// Reads the control port's lines until it ends or `events` returns false: each READY or verdict line is an
/// event, the port's end or a line longer than [`MAX_LINE`] the last one ([`Event::Broken`]).
pub(super) fn read_control(port: UnixStream, mut events: impl FnMut(Event) -> bool) {
    let mut r = BufReader::new(port);
    loop {
        let mut line = Vec::new();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => {
                events(Event::Broken("the control port closed".into()));
                return;
            }
            Ok(_) if !line.ends_with(b"\n") => {
                events(Event::Broken(format!(
                    "the guest sent a control line longer than {MAX_LINE} bytes"
                )));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                events(Event::Broken(format!("reading the control port: {e}")));
                return;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let json = |prefix: &str| {
            text.find(prefix)
                .and_then(|i| serde_json::from_str(text[i + prefix.len()..].trim()).ok())
        };
        let event = if let Some(v) = json(READY_PREFIX) {
            Event::Ready(v)
        } else if let Some(v) = json(VERDICT_PREFIX) {
            Event::Verdict(v)
        } else {
            continue;
        };
        if !events(event) {
            return;
        }
    }
}

/// What a cold run's control port said so far (its reader keeps it): whether the agent is READY, and its
/// last verdict.
#[derive(Clone, Default)]
pub(super) struct ControlState(Arc<(Mutex<Said>, Condvar)>);

#[derive(Default)]
struct Said {
    ready: bool,
    verdict: Option<serde_json::Value>,
}

impl ControlState {
    /// Starts the reader of `port` that keeps this state.
    pub(super) fn reader(&self, port: UnixStream) -> std::thread::JoinHandle<()> {
        let state = self.clone();
        std::thread::spawn(move || {
            read_control(port, |event| {
                let (said, changed) = &*state.0;
                let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Event::Ready(_) => said.ready = true,
                    Event::Verdict(v) => said.verdict = Some(v),
                    Event::OutputEnd(_) | Event::Broken(_) => {}
                }
                changed.notify_all();
                true
            })
        })
    }

    /// Whether the agent has said READY.
    pub(super) fn ready(&self) -> bool {
        self.said().ready
    }

    /// Waits until the agent says READY; false when it has not within `limit`.
    pub(super) fn wait_ready(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let (said, changed) = &*self.0;
        let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
        while !said.ready {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            said = changed
                .wait_timeout(said, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The agent's last verdict.
    pub(super) fn verdict(&self) -> Option<serde_json::Value> {
        self.said().verdict.clone()
    }

    fn said(&self) -> std::sync::MutexGuard<'_, Said> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How the caller's stdin travels on the stdin port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stdin {
    /// As it is, for a cold run's agent: QEMU drops what arrives before the guest opened the port, and a
    /// hang-up (end of file) ends the port at once, so the relay starts after READY (the caller waits), and
    /// hangs up only once the VMM has taken every byte from the socket.
    Raw,
    /// In frames, then the end frame, for a warm VM's agent (which serves one run after another).
    Framed,
}

/// Copies the caller's stdin (`source`; none: nothing) into the guest's stdin port until its end, a broken
/// port, or `stop` (the run ended first), then ends the guest's stdin as `how` says.
pub(super) fn relay_stdin(
    source: Option<OwnedFd>,
    mut to: UnixStream,
    how: Stdin,
    stop: &AtomicBool,
) {
    if let Some(source) = source {
        let mut from = File::from(source);
        let mut buf = vec![0u8; MAX_FRAME];
        while !stop.load(Ordering::Acquire) {
            let mut pfd = [libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            match sys::poll(&mut pfd, 50) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(libc::EINTR) => continue,
                Err(_) => break,
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let sent = match how {
                        Stdin::Raw => to.write_all(&buf[..n]),
                        Stdin::Framed => write_frame(&mut to, &buf[..n]),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    match how {
        Stdin::Framed => {
            let _ = write_frame(&mut to, b"");
        }
        Stdin::Raw => {
            let drained = Instant::now();
            while unread(&to) > 0 && drained.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Bytes written to a socket that its peer has not read yet (SIOCOUTQ); 0 when unknown.
fn unread(s: &UnixStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 { 0 } else { n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_become_events_and_a_cold_run_keeps_the_last_verdict() {
        let (mut guest, host) = UnixStream::pair().unwrap();
        let state = ControlState::default();
        let reader = state.reader(host);
        assert!(!state.wait_ready(Duration::from_millis(10)));
        let lines = format!(
            "noise\n{READY_PREFIX}{{\"uptime_ms\":5}}\nkernel: x {VERDICT_PREFIX}{{\"n\":1}}\n\
             {VERDICT_PREFIX}{{\"n\":2}}\n{VERDICT_PREFIX}not json\n"
        );
        guest.write_all(lines.as_bytes()).unwrap();
        drop(guest);
        reader.join().unwrap();
        assert!(state.ready() && state.wait_ready(Duration::ZERO));
        assert_eq!(state.verdict().unwrap()["n"], 2);
    }

    #[test]
    fn stdin_is_relayed_raw_or_framed_and_then_ended() {
        use crate::protocol::frames::{Frame, read_frame};
        for how in [Stdin::Raw, Stdin::Framed] {
            let (r, mut w) = std::io::pipe().unwrap();
            let (to, mut guest) = UnixStream::pair().unwrap();
            w.write_all(b"hello").unwrap();
            drop(w);
            if how == Stdin::Raw {
                // The guest reads as the relay writes: the relay hangs up once the guest has taken all.
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    guest.read_to_end(&mut got).unwrap();
                    got
                });
                relay_stdin(Some(r.into()), to, how, &AtomicBool::new(false));
                assert_eq!(reader.join().unwrap(), b"hello");
                continue;
            }
            relay_stdin(Some(r.into()), to, how, &AtomicBool::new(false));
            let mut buf = vec![0u8; MAX_FRAME];
            assert!(matches!(
                read_frame(&mut guest, &mut buf),
                Ok(Frame::Data(5))
            ));
            assert_eq!(&buf[..5], b"hello");
            assert!(matches!(read_frame(&mut guest, &mut buf), Ok(Frame::End)));
        }
    }
}

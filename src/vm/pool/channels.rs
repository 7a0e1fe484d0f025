//! The host side of a warm VM's channels: threads that read the control port (READY, verdicts) and the output
//! ports (framed streams into the current run's sinks), and the stdin relay that frames the caller's input.
//! Every guest line and frame is bounded; a broken channel is an event, never a hang.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::guest::frames::{Frame, MAX_FRAME, read_frame, write_frame};
use crate::guest::{READY_PREFIX, VERDICT_PREFIX};
use crate::namespace::sys;

/// The longest line the host accepts from a guest's control port.
const MAX_LINE: u64 = 1 << 20;

/// What the reader threads of a warm VM report.
#[derive(Debug)]
pub(super) enum Event {
    Ready(serde_json::Value),
    Verdict(serde_json::Value),
    /// The end frame of stdout (0) or stderr (1).
    OutputEnd(usize),
    /// A channel ended or broke: the VM is gone or hostile.
    Broken(String),
}

/// Lines from the control port: READY and verdicts.
/// The readers' side of the event channel: every event also makes the activity eventfd readable.
#[derive(Clone)]
pub(super) struct Notify {
    pub(super) tx: Sender<Event>,
    pub(super) fd: Arc<EventFd>,
}

impl Notify {
    fn send(&self, e: Event) -> Result<(), ()> {
        self.tx.send(e).map_err(|_| ())?;
        let _ = self.fd.write(1);
        Ok(())
    }
}

pub(super) fn read_control(port: UnixStream, events: Notify) {
    let mut r = BufReader::new(port);
    loop {
        let mut line = Vec::new();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => {
                let _ = events.send(Event::Broken("the control port closed".into()));
                return;
            }
            Ok(_) if !line.ends_with(b"\n") => {
                let _ = events.send(Event::Broken(format!(
                    "the guest sent a control line longer than {MAX_LINE} bytes"
                )));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = events.send(Event::Broken(format!("reading the control port: {e}")));
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
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Frames from an output port into the current run's sink.
pub(super) fn read_output(
    mut port: UnixStream,
    which: usize,
    sink: Arc<Mutex<Option<File>>>,
    events: Notify,
) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let event = match read_frame(&mut port, &mut buf) {
            Ok(Frame::Data(n)) => {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                // A reader that went away loses the rest of this run's output, nothing more.
                if let Some(f) = s.as_mut()
                    && f.write_all(&buf[..n]).is_err()
                {
                    *s = None;
                }
                continue;
            }
            Ok(Frame::End) => {
                // Closing the run's end of the stream: its reader sees the end of file.
                *sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Event::OutputEnd(which)
            }
            Ok(Frame::Closed) => Event::Broken("an output port closed".into()),
            Err(e) => Event::Broken(format!("bad output frame: {e}")),
        };
        let last = matches!(event, Event::Broken(_));
        if last {
            // The run's end of the stream closes with the VM's: its reader sees the end of file.
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if events.send(event).is_err() || last {
            return;
        }
    }
}

/// The caller's stdin → frames, then the end frame (also when the run ends first: `stop`).
pub(super) fn relay_stdin(source: Option<OwnedFd>, mut to: UnixStream, stop: &AtomicBool) {
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
                    if write_frame(&mut to, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = write_frame(&mut to, b"");
}

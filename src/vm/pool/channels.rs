//! The host side of a warm VM's output ports: threads that read the framed streams into the current run's
//! sinks, and the event channel they share with the control reader ([`crate::vm::control`]). Every frame is
//! bounded; a broken channel is an event, never a hang.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::protocol::frames::{Frame, MAX_FRAME, read_frame};
use crate::vm::control::Event;

/// The readers' side of the event channel: every event also makes the activity eventfd readable.
#[derive(Clone)]
pub(super) struct Notify {
    pub(super) tx: Sender<Event>,
    pub(super) fd: Arc<EventFd>,
}

impl Notify {
    pub(super) fn send(&self, e: Event) -> Result<(), ()> {
        self.tx.send(e).map_err(|_| ())?;
        let _ = self.fd.write(1);
        Ok(())
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

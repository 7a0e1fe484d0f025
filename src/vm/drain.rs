//! A cold run's output, relayed to its last byte before the VM ends.
//!
//! A program's write on a virtio port completes once the guest queued it, not when the host took it: when the
//! caller reads slowly, the VMM stops taking the port's buffers and megabytes wait in the guest. Were the
//! agent to end the VM when the program ends, they would be lost. So the spec carries a random end mark
//! ([`RunSpec::end_mark`](crate::protocol::RunSpec::end_mark)); once the sandbox is gone the agent writes it
//! after the last byte of each output port; each host relay passes everything before it on and stops there;
//! when both relays ended the host sends [`DRAINED_LINE`] on the control port, and only then does the agent
//! end the VM. A relay also ends at the end of its socket (the VM is gone) or when the caller's stream broke,
//! so a guest that never marks (or a failed agent) costs nothing more than before: the run's deadline.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::error::VmError;
use crate::protocol::{DRAINED_LINE, end_mark_bytes, to_hex};

/// A run's end mark: its hex form for the spec, its bytes on the ports.
pub(super) struct EndMark {
    pub(super) hex: String,
    pub(super) bytes: Vec<u8>,
}

impl EndMark {
    /// A new mark from 16 random bytes: no program output contains it by chance.
    pub(super) fn new() -> Result<EndMark, VmError> {
        let mut raw = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(VmError::EndMark)?;
        let hex = to_hex(&raw);
        let bytes = end_mark_bytes(&hex);
        Ok(EndMark { hex, bytes })
    }
}

/// The output relays of one run still going; the last one to end tells the agent.
#[derive(Clone)]
pub(super) struct Drained(Arc<State>);

struct State {
    relays: usize,
    /// Relays still going.
    left: AtomicUsize,
    /// Relays that ended at the mark.
    marked: AtomicUsize,
    told: AtomicBool,
    control: UnixStream,
}

impl Drained {
    /// For `relays` relays; `control` is the host's end of the control port.
    pub(super) fn new(relays: usize, control: UnixStream) -> Drained {
        Drained(Arc::new(State {
            relays,
            left: AtomicUsize::new(relays),
            marked: AtomicUsize::new(0),
            told: AtomicBool::new(false),
            control,
        }))
    }

    /// One relay ended, at the mark or not; after the last, the agent hears [`DRAINED_LINE`].
    pub(super) fn relay_ended(&self, at_mark: bool) {
        if at_mark {
            self.0.marked.fetch_add(1, Ordering::AcqRel);
        }
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let line = format!("{DRAINED_LINE}\n");
            // A VM that is gone gives EPIPE: nobody to tell.
            let _ = super::engine::send_all(&self.0.control, line.as_bytes());
            self.0.told.store(true, Ordering::Release);
        }
    }

    /// Whether every relay passed on its port's output up to the agent's mark.
    pub(super) fn complete(&self) -> bool {
        self.0.told.load(Ordering::Acquire)
            && self.0.marked.load(Ordering::Acquire) == self.0.relays
    }
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// At the end mark: every byte before it was passed on.
    Mark,
    /// At the end of the stream (the VM is gone), or a read error.
    Eof,
    /// The caller's stream took no more.
    WriteFailed,
}

/// Copies `from` into `to` by read and write until end of file or `mark` (not passed on, nor anything after
/// it). A possible start of the mark at the end of a read is held back until the next read tells.
///
/// Not `std::io::copy`, which splices a socket into a pipe: a reader of that pipe was then not woken for
/// data spliced after the first (seen on Linux 6.18), so a program's output reached a piped reader only at
/// the run's end, too late for anyone waiting on a line such as a server's "listening".
pub(super) fn relay(from: &mut impl Read, to: &mut impl Write, mark: &[u8]) -> Ended {
    let finder = memchr::memmem::Finder::new(mark);
    // `held` bytes at the start of `buf` are a possible start of the mark, from the previous read.
    let mut buf = vec![0u8; (64 << 10) + mark.len()];
    let mut held = 0;
    loop {
        let n = match from.read(&mut buf[held..]) {
            Ok(0) => {
                let flushed = to.write_all(&buf[..held]).is_ok();
                return if flushed {
                    Ended::Eof
                } else {
                    Ended::WriteFailed
                };
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ended::Eof,
        };
        let data = &buf[..held + n];
        if let Some(at) = finder.find(data) {
            return match to.write_all(&data[..at]) {
                Ok(()) => Ended::Mark,
                Err(_) => Ended::WriteFailed,
            };
        }
        let (len, keep) = (data.len(), partial_mark(data, mark));
        if to.write_all(&data[..len - keep]).is_err() {
            return Ended::WriteFailed;
        }
        buf.copy_within(len - keep..len, 0);
        held = keep;
    }
}

/// The length of the longest end of `data` that is a proper start of `mark`.
fn partial_mark(data: &[u8], mark: &[u8]) -> usize {
    (1..mark.len().min(data.len() + 1))
        .rev()
        .find(|&k| data.ends_with(&mark[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes in the given chunk sizes.
    struct Chunks {
        data: Vec<u8>,
        sizes: Vec<usize>,
        at: usize,
    }

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let want = self.sizes.first().copied().unwrap_or(usize::MAX);
            if !self.sizes.is_empty() {
                self.sizes.remove(0);
            }
            let n = want.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn run(data: &[u8], sizes: &[usize], mark: &[u8]) -> (Vec<u8>, Ended) {
        let mut from = Chunks {
            data: data.to_vec(),
            sizes: sizes.to_vec(),
            at: 0,
        };
        let mut to = Vec::new();
        let ended = relay(&mut from, &mut to, mark);
        (to, ended)
    }

    #[test]
    fn the_output_stops_at_the_mark_wherever_the_reads_split_it() {
        let mark = end_mark_bytes("00112233445566778899aabbccddeeff");
        // Output that is full of the mark's first byte and of its starts, as zeroed output would be.
        let mut out = vec![0u8; 300];
        out.extend_from_slice(&mark[..mark.len() - 1]);
        out.extend_from_slice(b"after a near miss");
        out.extend_from_slice(&mark[..5]);
        let mut stream = out.clone();
        stream.extend_from_slice(&mark);
        stream.extend_from_slice(b"never passed on");
        for first in 1..stream.len() {
            let (got, ended) = run(&stream, &[first, 7, 1, 3], &mark);
            assert_eq!(ended, Ended::Mark, "first read {first}");
            assert_eq!(got, out, "first read {first}");
        }
    }

    #[test]
    fn without_the_mark_everything_is_passed_on_to_the_end() {
        let mark = end_mark_bytes("00112233445566778899aabbccddeeff");
        // Ends with a start of the mark: held back, then flushed at the end of the stream.
        let mut stream = b"output".to_vec();
        stream.extend_from_slice(&mark[..mark.len() - 1]);
        for size in [1, 2, 5, 64 << 10] {
            let (got, ended) = run(&stream, &[size; 64], &mark);
            assert_eq!(ended, Ended::Eof);
            assert_eq!(got, stream, "reads of {size}");
        }
        assert_eq!(run(b"", &[], &mark), (Vec::new(), Ended::Eof));
    }

    #[test]
    fn a_caller_that_takes_no_more_ends_the_relay() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mark = end_mark_bytes("00112233445566778899aabbccddeeff");
        let mut from = Chunks {
            data: b"some output".to_vec(),
            sizes: vec![4; 8],
            at: 0,
        };
        assert_eq!(relay(&mut from, &mut Broken, &mark), Ended::WriteFailed);
    }

    #[test]
    fn the_agent_hears_drained_after_the_last_relay_only() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        agent.set_nonblocking(true).unwrap();
        let drained = Drained::new(2, host);
        drained.relay_ended(true);
        let mut buf = [0u8; 64];
        assert!(agent.read(&mut buf).is_err(), "told after the first relay");
        assert!(!drained.complete());
        drained.relay_ended(true);
        let n = agent.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("{DRAINED_LINE}\n").as_bytes());
        assert!(drained.complete());
        let (host, _agent) = UnixStream::pair().unwrap();
        let cut = Drained::new(2, host);
        cut.relay_ended(true);
        cut.relay_ended(false);
        assert!(!cut.complete(), "a relay ended before its mark");
    }
}

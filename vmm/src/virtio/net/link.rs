//! The byte stream to passt and its framing: each frame is preceded by its length as a big-endian u32.
//! [`Input`] collects what passt sent until a frame is complete (a stream delivers frames in arbitrary
//! pieces) and discards frames of a length the device refuses; [`Output`] holds framed guest frames
//! until passt takes them (a stream write may take only part).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::MAX_FRAME;

/// The length prefix.
const PREFIX: usize = 4;
/// The most bytes one read takes from the socket.
const READ_CHUNK: usize = 64 << 10;

/// The stream to passt: the socket (`None` once passt is gone) and the bytes in flight both ways.
pub(super) struct Link {
    pub(super) socket: Option<UnixStream>,
    pub(super) input: Input,
    pub(super) output: Output,
}

impl Link {
    /// A link on a connected socket, at a frame boundary both ways.
    pub(super) fn new(socket: UnixStream) -> Link {
        Link {
            socket: Some(socket),
            input: Input::default(),
            output: Output::default(),
        }
    }

    /// A link whose peer is gone (its stream position was lost).
    pub(super) fn gone() -> Link {
        Link {
            socket: None,
            input: Input::default(),
            output: Output::default(),
        }
    }

    /// passt is gone: the socket is closed and the frames waiting for it are dropped; how many.
    pub(super) fn hang_up(&mut self) -> u64 {
        self.socket = None;
        self.output.clear() as u64
    }

    /// Why the link cannot be saved as it is (bytes in flight), or `None`.
    pub(super) fn busy(&self) -> Option<String> {
        let input = self.input.buffered();
        let output = self.output.pending();
        (input > 0 || output > 0).then(|| {
            format!(
                "{input} bytes from passt not yet in the guest, {output} guest bytes not yet taken by passt"
            )
        })
    }
}

/// Bytes read from passt that the guest has not taken yet.
#[derive(Debug, Default)]
pub(super) struct Input {
    buf: Vec<u8>,
    /// Where the unconsumed bytes start in `buf`.
    start: usize,
    /// Bytes of a refused frame still to discard.
    skip: u64,
}

impl Input {
    /// Reads what the socket has (at most [`READ_CHUNK`] bytes); `Ok(0)` is end of file.
    pub(super) fn fill(&mut self, mut socket: &UnixStream) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let got = socket.read(&mut self.buf[old..]);
        self.buf.truncate(old + *got.as_ref().unwrap_or(&0));
        got
    }

    /// Adds bytes as if read from the socket (tests).
    #[cfg(test)]
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, as a range of [`Input::bytes`], after discarding refused frames (each
    /// counted in `dropped`); `None` while more bytes are needed.
    pub(super) fn frame(&mut self, dropped: &AtomicU64) -> Option<Range<usize>> {
        loop {
            let avail = self.buf.len() - self.start;
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(avail, |s| s.min(avail));
                self.start += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    return None;
                }
                continue;
            }
            let prefix = self.buf.get(self.start..self.start + PREFIX)?;
            let len = u32::from_be_bytes(prefix.try_into().ok()?) as usize;
            if len == 0 || len > MAX_FRAME {
                dropped.fetch_add(1, Ordering::Relaxed);
                self.start += PREFIX;
                self.skip = len as u64;
                continue;
            }
            let begin = self.start + PREFIX;
            return (avail >= PREFIX + len).then_some(begin..begin + len);
        }
    }

    /// Whether a complete frame waits (no more bytes needed for it).
    pub(super) fn has_frame(&self) -> bool {
        if self.skip > 0 {
            return false;
        }
        let Some(prefix) = self.buf.get(self.start..self.start + PREFIX) else {
            return false;
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        // A refused length is discarded without the guest: more bytes are needed then too.
        (1..=MAX_FRAME).contains(&len) && self.buf.len() - self.start >= PREFIX + len
    }

    /// The buffered bytes; a range from [`Input::frame`] selects a frame.
    pub(super) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Takes away the frame [`Input::frame`] returned last.
    pub(super) fn consume(&mut self, range: &Range<usize>) {
        self.start = range.end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Bytes buffered, or still to discard.
    pub(super) fn buffered(&self) -> u64 {
        (self.buf.len() - self.start) as u64 + self.skip
    }
}

/// Framed guest frames passt has not taken yet.
#[derive(Debug, Default)]
pub(super) struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    at: usize,
    /// Where each frame not completely written ends in `buf`.
    ends: VecDeque<usize>,
}

impl Output {
    /// Appends `frame` with its length prefix.
    pub(super) fn push(&mut self, frame: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.clear();
        }
        self.buf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(frame);
        self.ends.push_back(self.buf.len());
    }

    /// Bytes waiting for passt.
    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Writes as much as passt takes now; how many frames were completed. An error other than "would
    /// block" means passt is gone.
    pub(super) fn flush(&mut self, socket: &UnixStream) -> std::io::Result<u64> {
        let mut frames = 0;
        while self.at < self.buf.len() {
            // sendmsg with MSG_NOSIGNAL: a vanished peer gives EPIPE, not SIGPIPE.
            match socket.send_with_fds(&[&self.buf[self.at..]], &[]) {
                Ok(0) => break,
                Ok(n) => frames += self.written(n),
                Err(e) => {
                    let e = std::io::Error::from(e);
                    match e.kind() {
                        ErrorKind::Interrupted => {}
                        ErrorKind::WouldBlock => break,
                        _ => return Err(e),
                    }
                }
            }
        }
        if self.at == self.buf.len() {
            self.clear();
        } else if self.at >= self.buf.len() / 2 {
            // Keep the buffer from growing: move the unwritten tail to the front.
            self.buf.drain(..self.at);
            for end in &mut self.ends {
                *end -= self.at;
            }
            self.at = 0;
        }
        Ok(frames)
    }

    /// `n` more bytes were written; how many frames that completed.
    fn written(&mut self, n: usize) -> u64 {
        self.at += n;
        let mut done = 0;
        while self.ends.front().is_some_and(|&end| end <= self.at) {
            self.ends.pop_front();
            done += 1;
        }
        done
    }

    /// Forgets everything; how many frames were not written completely.
    pub(super) fn clear(&mut self) -> usize {
        let frames = self.ends.len();
        self.buf.clear();
        self.ends.clear();
        self.at = 0;
        frames
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    /// `frames` with passt's length prefixes (also for the device's tests).
    pub(in crate::virtio::net) fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend((f.len() as u32).to_be_bytes());
            out.extend(*f);
        }
        out
    }

    /// The frames `input` yields, consuming them.
    fn frames(input: &mut Input, dropped: &AtomicU64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = input.frame(dropped) {
            assert!(input.has_frame());
            out.push(input.bytes(r.clone()).to_vec());
            input.consume(&r);
        }
        assert!(!input.has_frame());
        out
    }

    #[test]
    fn frames_arrive_whole_whatever_the_pieces() {
        let stream = framed(&[b"first frame...", &[7u8; 1514], b"third"]);
        for piece in [1, 3, 4, 5, 17, 1000, stream.len()] {
            let dropped = AtomicU64::new(0);
            let mut input = Input::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                input.push(chunk);
                got.extend(frames(&mut input, &dropped));
            }
            assert_eq!(got.len(), 3, "pieces of {piece}");
            assert_eq!(got[0], b"first frame...");
            assert_eq!(got[1], vec![7u8; 1514]);
            assert_eq!(got[2], b"third");
            assert_eq!(input.buffered(), 0);
            assert_eq!(dropped.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn refused_lengths_are_skipped_with_their_bytes() {
        let dropped = AtomicU64::new(0);
        let mut input = Input::default();
        // A length of 0, then a frame one byte too long (its bytes follow and are skipped), then a good one.
        let mut stream = vec![0, 0, 0, 0];
        let big = MAX_FRAME + 1;
        stream.extend((big as u32).to_be_bytes());
        stream.extend(vec![0xee; big]);
        stream.extend(framed(&[b"good"]));
        for chunk in stream.chunks(4096) {
            input.push(chunk);
            for f in frames(&mut input, &dropped) {
                assert_eq!(f, b"good");
            }
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert_eq!(input.buffered(), 0);
        // A length of 4 GiB - 1: skipped as far as bytes come, no allocation of that size.
        input.push(&u32::MAX.to_be_bytes());
        input.push(&[1; 100]);
        assert!(input.frame(&dropped).is_none());
        assert_eq!(input.buffered(), u64::from(u32::MAX) - 100);
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn output_survives_partial_writes_and_counts_lost_frames() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut out = Output::default();
        let frame = vec![0x5a; 60_000];
        // Far more than a socket buffer takes at once.
        for _ in 0..40 {
            out.push(&frame);
        }
        let mut done = out.flush(&ours).unwrap();
        assert!(done < 40);
        let left = out.pending();
        assert!(left > 0 && left < 40 * 60_004, "{left}");
        // The reader takes everything; the writer finishes.
        let reader = std::thread::spawn(move || {
            theirs
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut all = vec![0u8; 40 * 60_004];
            (&theirs).read_exact(&mut all).unwrap();
            all
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.pending() > 0 {
            assert!(std::time::Instant::now() < deadline);
            done += out.flush(&ours).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let all = reader.join().unwrap();
        assert_eq!(all, framed(&vec![&frame[..]; 40]));
        assert_eq!(done, 40);
        assert_eq!(out.clear(), 0);
        // Half a frame written, one not at all: two frames lost.
        out.push(b"abcd");
        out.push(b"efgh");
        assert_eq!(out.written(6), 0);
        assert_eq!(out.clear(), 2);
        // A peer that is gone: an error, no SIGPIPE.
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        out.push(b"lost");
        assert!(out.flush(&ours).is_err());
    }
}

//! Framed streams for served runs (a warm VM that runs one program after another over the same ports).
//!
//! A port carries the streams of many runs, so each run's bytes travel as frames: a little-endian `u32`
//! length, then that many bytes; a frame of length 0 ends the run's stream. Frames are at most
//! [`MAX_FRAME`] bytes: a reader refuses a longer header (a hostile peer) instead of allocating for it.

use std::io::{self, Read, Write};

/// The largest payload of one frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// Writes one frame (`data` may be empty: the end of the stream). Longer data goes as several frames.
pub fn write_frame(to: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return to.write_all(&0u32.to_le_bytes());
    }
    for chunk in data.chunks(MAX_FRAME) {
        let mut buf = Vec::with_capacity(4 + chunk.len());
        buf.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        buf.extend_from_slice(chunk);
        to.write_all(&buf)?;
    }
    Ok(())
}

/// What [`read_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A frame of this many bytes, now at the start of the buffer.
    Data(usize),
    /// The end of this run's stream (a frame of length 0).
    End,
    /// The port itself ended (end of file between frames).
    Closed,
}

/// Reads one frame into `buf` (which must hold [`MAX_FRAME`] bytes).
pub fn read_frame(from: &mut impl Read, buf: &mut [u8]) -> io::Result<Frame> {
    let mut head = [0u8; 4];
    if !read_head(from, &mut head)? {
        return Ok(Frame::Closed);
    }
    let len = u32::from_le_bytes(head) as usize;
    if len == 0 {
        return Ok(Frame::End);
    }
    if len > MAX_FRAME || len > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    from.read_exact(&mut buf[..len])?;
    Ok(Frame::Data(len))
}

/// Fills `head` (a frame's header); `false` when the stream ended before its first byte, an error when it
/// ended inside it.
pub(crate) fn read_head(from: &mut impl Read, head: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < head.len() {
        match from.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_long_data() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        write_frame(&mut wire, &vec![7u8; MAX_FRAME + 10]).unwrap();
        write_frame(&mut wire, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Frame::Data(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            read_frame(&mut r, &mut buf).unwrap(),
            Frame::Data(MAX_FRAME)
        );
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Frame::Data(10));
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Frame::End);
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Frame::Closed);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut buf = vec![0u8; MAX_FRAME];
        let huge = (u32::MAX).to_le_bytes();
        assert!(read_frame(&mut &huge[..], &mut buf).is_err());
        let short = [5u8, 0, 0, 0, b'a'];
        assert!(read_frame(&mut &short[..], &mut buf).is_err());
        assert!(read_frame(&mut &[1u8, 0][..], &mut buf).is_err());
    }
}

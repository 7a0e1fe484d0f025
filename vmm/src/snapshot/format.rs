//! The snapshot file: one page of header, the state (JSON of [`super::state::Snapshot`]), then guest RAM at a
//! page-aligned offset so a restore can map it `MAP_PRIVATE` (copy-on-write) instead of reading it.
//!
//! ```text
//! 0      header (little endian): magic[16] version:u32 0:u32 state_offset:u64 state_len:u64
//!        state_crc32:u32 0:u32 memory_offset:u64 memory_len:u64 header_crc32:u32, zeros to 4 KiB
//! 4096   state JSON (state_len bytes), zeros to the next 4 KiB
//! M      guest RAM, regions back to back (memory_len bytes); all-zero pages are holes (a sparse file)
//! ```
//!
//! Everything read back is checked before use: the magic, the version, both checksums, every offset and
//! length against the others and against the file's real size (a truncated file is refused before any
//! mapping, so a restore never faults on a page beyond the end of the file), and the state's size cap.
//! Guest RAM itself is not checksummed (that would cost a full read at every restore, the very thing the
//! mapping avoids); it is as trusted as the kernel image in the same per-user cache.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 16] = *b"SANDBOX-VMSNAP\0\0";
/// The version of this layout and of the state it carries; any other is refused.
pub const VERSION: u32 = 1;
/// Alignment of the sections (the host page size on x86-64).
pub const PAGE: u64 = 4096;
/// The largest state section accepted (a real one is tens of KiB).
pub const MAX_STATE: u64 = 16 << 20;
const HEADER_LEN: usize = 68;

/// Errors of reading or writing a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O call on the file failed.
    #[error("snapshot file: {what} failed: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file is shorter than its header says (or than a header).
    #[error(
        "snapshot file is truncated: {len} bytes, {want} expected (an interrupted write? delete it and a new one is made)"
    )]
    Truncated {
        /// Its size.
        len: u64,
        /// What the header announces.
        want: u64,
    },
    /// Not a snapshot of ours.
    #[error("not a sandbox VM snapshot (bad magic)")]
    Magic,
    /// Written by another version of the format.
    #[error(
        "snapshot format version {0}, this build reads only version {VERSION} (delete the file)"
    )]
    Version(u32),
    /// A checksum does not match.
    #[error("snapshot {what} checksum mismatch (the file is corrupted: delete it)")]
    Checksum {
        /// Header or state.
        what: &'static str,
    },
    /// Offsets or lengths that contradict each other.
    #[error("snapshot header is inconsistent: {0}")]
    Layout(String),
}

/// The sections of a snapshot file, as its header describes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where the state starts (one page in).
    pub state_offset: u64,
    /// The state's length.
    pub state_len: u64,
    /// CRC-32 of the state.
    pub state_crc: u32,
    /// Where guest RAM starts (page aligned).
    pub memory_offset: u64,
    /// Guest RAM's length.
    pub memory_len: u64,
}

/// The CRC-32 (IEEE 802.3, reflected, as zlib) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn round_up(n: u64) -> Option<u64> {
    n.checked_add(PAGE - 1).map(|n| n / PAGE * PAGE)
}

impl Header {
    /// The header of a file holding `state` and `memory_len` bytes of RAM.
    pub fn new(state: &[u8], memory_len: u64) -> Header {
        let state_len = state.len() as u64;
        Header {
            state_offset: PAGE,
            state_len,
            state_crc: crc32(state),
            // A state this large is refused by `encode`'s caller long before overflow matters.
            memory_offset: round_up(PAGE + state_len).unwrap_or(u64::MAX),
            memory_len,
        }
    }

    /// The total file size.
    pub fn file_len(&self) -> Option<u64> {
        self.memory_offset.checked_add(self.memory_len)
    }

    /// The first page of the file.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(PAGE as usize);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&self.state_offset.to_le_bytes());
        h.extend_from_slice(&self.state_len.to_le_bytes());
        h.extend_from_slice(&self.state_crc.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&self.memory_offset.to_le_bytes());
        h.extend_from_slice(&self.memory_len.to_le_bytes());
        let crc = crc32(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(h.len(), HEADER_LEN);
        h.resize(PAGE as usize, 0);
        h
    }

    /// Reads back the first bytes of a file of `file_len` bytes, checking everything the header says.
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
        if bytes.len() < HEADER_LEN || file_len < PAGE {
            return Err(FormatError::Truncated {
                len: file_len,
                want: PAGE,
            });
        }
        if bytes[..16] != MAGIC {
            return Err(FormatError::Magic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        if u32_at(64) != crc32(&bytes[..64]) {
            return Err(FormatError::Checksum { what: "header" });
        }
        let version = u32_at(16);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let h = Header {
            state_offset: u64_at(24),
            state_len: u64_at(32),
            state_crc: u32_at(40),
            memory_offset: u64_at(48),
            memory_len: u64_at(56),
        };
        let layout = |m: String| Err(FormatError::Layout(m));
        if h.state_offset != PAGE {
            return layout(format!("state at {}, not {PAGE}", h.state_offset));
        }
        if h.state_len == 0 || h.state_len > MAX_STATE {
            return layout(format!("state of {} bytes (1 to {MAX_STATE})", h.state_len));
        }
        if Some(h.memory_offset) != round_up(PAGE + h.state_len) {
            return layout(format!(
                "guest RAM at {}, not at the page after the state",
                h.memory_offset
            ));
        }
        if h.memory_len == 0 || !h.memory_len.is_multiple_of(PAGE) {
            return layout(format!("guest RAM of {} bytes", h.memory_len));
        }
        let Some(want) = h.file_len() else {
            return layout("sizes overflow".into());
        };
        if file_len < want {
            return Err(FormatError::Truncated {
                len: file_len,
                want,
            });
        }
        if file_len > want {
            return layout(format!(
                "{} bytes after the end of guest RAM",
                file_len - want
            ));
        }
        Ok(h)
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> FormatError {
    move |source| FormatError::Io { what, source }
}

/// Reads and checks the header and the state of `file`; returns the header and the state's bytes.
pub fn read(file: &File) -> Result<(Header, Vec<u8>), FormatError> {
    let len = file.metadata().map_err(io("fstat"))?.len();
    let mut first = vec![0u8; HEADER_LEN.min(len as usize)];
    file.read_exact_at(&mut first, 0)
        .map_err(io("reading the header"))?;
    let header = Header::decode(&first, len)?;
    let mut state = vec![0u8; header.state_len as usize];
    file.read_exact_at(&mut state, header.state_offset)
        .map_err(io("reading the state"))?;
    if crc32(&state) != header.state_crc {
        return Err(FormatError::Checksum { what: "state" });
    }
    Ok((header, state))
}

/// Writes the header and `state` to an empty `file` and sets its length to hold `memory_len` bytes of RAM
/// (zeros, as holes); the caller then writes RAM at [`Header::memory_offset`].
pub fn write_head(file: &File, state: &[u8], memory_len: u64) -> Result<Header, FormatError> {
    if state.len() as u64 > MAX_STATE {
        return Err(FormatError::Layout(format!(
            "state of {} bytes exceeds {MAX_STATE}",
            state.len()
        )));
    }
    let header = Header::new(state, memory_len);
    let total = header
        .file_len()
        .ok_or_else(|| FormatError::Layout("sizes overflow".into()))?;
    file.set_len(total).map_err(io("ftruncate"))?;
    file.write_all_at(&header.encode(), 0)
        .map_err(io("writing the header"))?;
    file.write_all_at(state, header.state_offset)
        .map_err(io("writing the state"))?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    fn file_with(state: &[u8], memory_len: u64) -> File {
        let f = tempfile();
        write_head(&f, state, memory_len).unwrap();
        f
    }

    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "snapshot-format-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn a_written_file_reads_back() {
        let f = file_with(b"{\"x\":1}", 2 * PAGE);
        let (h, state) = read(&f).unwrap();
        assert_eq!(state, b"{\"x\":1}");
        assert_eq!(h.memory_offset, 2 * PAGE);
        assert_eq!(h.memory_len, 2 * PAGE);
        assert_eq!(f.metadata().unwrap().len(), 4 * PAGE);
    }

    #[test]
    fn truncated_corrupted_or_foreign_files_are_refused() {
        let f = file_with(b"{\"x\":1}", 2 * PAGE);
        // Truncated inside RAM, inside the header, and empty.
        for len in [3 * PAGE, 30, 0] {
            f.set_len(len).unwrap();
            let e = read(&f).unwrap_err();
            assert!(matches!(e, FormatError::Truncated { .. }), "{len}: {e}");
        }
        // A flipped state byte.
        let f = file_with(b"{\"x\":1}", PAGE);
        f.write_all_at(b"2", PAGE + 5).unwrap();
        let e = read(&f).unwrap_err();
        assert!(matches!(e, FormatError::Checksum { what: "state" }), "{e}");
        // A flipped header byte (the RAM length).
        let f = file_with(b"{}", PAGE);
        f.write_all_at(&[9], 57).unwrap();
        let e = read(&f).unwrap_err();
        assert!(matches!(e, FormatError::Checksum { what: "header" }), "{e}");
        // Extra bytes after RAM.
        let f = file_with(b"{}", PAGE);
        f.set_len(3 * PAGE + 1).unwrap();
        assert!(matches!(read(&f).unwrap_err(), FormatError::Layout(_)));
        // Another file altogether.
        let f = tempfile();
        f.write_all_at(&[0x7f; 8192], 0).unwrap();
        assert!(matches!(read(&f).unwrap_err(), FormatError::Magic));
    }

    #[test]
    fn headers_that_lie_are_refused_even_with_a_good_checksum() {
        let good = Header::new(b"{}", PAGE);
        let with = |h: Header| {
            let bytes = h.encode();
            Header::decode(&bytes, h.file_len().unwrap_or(u64::MAX))
        };
        assert_eq!(with(good).unwrap(), good);
        let bad = [
            Header {
                state_offset: 0,
                ..good
            },
            Header {
                state_len: 0,
                ..good
            },
            Header {
                state_len: MAX_STATE + 1,
                memory_offset: round_up(PAGE + MAX_STATE + 1).unwrap(),
                ..good
            },
            Header {
                memory_offset: good.memory_offset + PAGE,
                ..good
            },
            Header {
                memory_len: 0,
                ..good
            },
            Header {
                memory_len: 100,
                ..good
            },
            Header {
                memory_len: u64::MAX - PAGE + 1,
                ..good
            },
        ];
        for h in bad {
            assert!(matches!(with(h), Err(FormatError::Layout(_))), "{h:?}");
        }
        let mut v = good.encode();
        v[16] = 2;
        let crc = crc32(&v[..64]).to_le_bytes();
        v[64..68].copy_from_slice(&crc);
        assert!(matches!(
            Header::decode(&v, 3 * PAGE),
            Err(FormatError::Version(2))
        ));
    }
}

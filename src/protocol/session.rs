//! A session in a VM: the agent keeps one sandbox (its init, namespaces, cgroup) up in the guest and runs
//! commands in it as the host asks, several at once.
//!
//! After a specification with [`RunSpec::session`](super::RunSpec::session) the control port carries JSON
//! lines both ways: the host's [`Request`]s (`SANDBOX-REQUEST {json}`), the agent's [`Reply`]s
//! (`SANDBOX-REPLY {json}`), and at the session's end the agent's verdict line. The commands' streams travel
//! as [`mux`] frames: stdin on the stdin port (host → guest), stdout and stderr on the stdout port (guest →
//! host), each frame naming its command and stream.

use serde::{Deserialize, Serialize};

/// The prefix of a host request line.
pub const REQUEST_PREFIX: &str = "SANDBOX-REQUEST ";
/// The prefix of an agent reply line.
pub const REPLY_PREFIX: &str = "SANDBOX-REPLY ";
/// The most commands a VM session runs at once.
pub const MAX_COMMANDS: usize = 64;

/// What the host asks of a VM session's agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Run a command; its streams are the [`mux`] streams of `id` (stdin only when `stdin` is set, else
    /// `/dev/null`).
    Exec {
        /// The host's number for it, unique in the session.
        id: u32,
        /// The program, looked up in `PATH` unless it contains a `/`.
        program: String,
        /// Its `argv[0]` when it is not `program`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arg0: Option<String>,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Variables added to the session's environment.
        #[serde(default)]
        env: Vec<(String, String)>,
        /// Its working directory (absolute), else the session's.
        #[serde(default)]
        cwd: Option<String>,
        /// Whether the host sends stdin frames for it.
        #[serde(default)]
        stdin: bool,
    },
    /// Send `signal` to a command's process group (`id` 0: to every process of the session).
    Signal {
        /// The command.
        id: u32,
        /// The signal number.
        signal: i32,
    },
    /// End the session: SIGTERM to every process, SIGKILL after `grace_ms`; the agent then sends the
    /// session's verdict and ends the VM.
    Stop {
        /// The grace in milliseconds.
        grace_ms: u64,
    },
}

/// What a VM session's agent tells the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// The session is up; what it enforces.
    Up {
        /// [`Enforced`](crate::outcome::Enforced) as JSON.
        enforced: serde_json::Value,
    },
    /// A command started: from now on its stdin frames reach it (the host sends none before).
    Started {
        /// The command.
        id: u32,
    },
    /// A command ended (or could not start): its verdict ([`Outcome::report_json`](crate::Outcome)), sent
    /// after the end frames of its stdout and stderr.
    Exited {
        /// The command.
        id: u32,
        /// Its verdict.
        verdict: serde_json::Value,
    },
}

impl Request {
    /// The request as a control line.
    pub fn to_line(&self) -> String {
        format!(
            "{REQUEST_PREFIX}{}\n",
            serde_json::to_string(self).unwrap_or_default()
        )
    }
}

impl Reply {
    /// The reply as a control line.
    pub fn to_line(&self) -> String {
        format!(
            "{REPLY_PREFIX}{}\n",
            serde_json::to_string(self).unwrap_or_default()
        )
    }
}

/// Parses a line with `prefix` (`None`: not such a line, or not valid JSON of `T`).
pub fn parse<T: serde::de::DeserializeOwned>(line: &[u8], prefix: &str) -> Option<T> {
    let text = std::str::from_utf8(line).ok()?;
    let i = text.find(prefix)?;
    serde_json::from_str(text[i + prefix.len()..].trim()).ok()
}

/// Multiplexed frames: a little-endian `u32` command id, one byte of stream (0 stdin, 1 stdout, 2 stderr), a
/// little-endian `u32` length, then that many bytes (at most [`MAX_FRAME`](super::frames::MAX_FRAME)); length
/// 0 ends that command's stream.
pub mod mux {
    use std::io::{self, Read, Write};

    use crate::protocol::frames::MAX_FRAME;

    /// A frame's header length.
    pub const HEADER: usize = 9;

    /// What [`read`] found.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Frame {
        /// `len` bytes of command `id`'s `stream`, now at the start of the buffer.
        Data {
            /// The command.
            id: u32,
            /// The stream.
            stream: u8,
            /// How many bytes.
            len: usize,
        },
        /// Command `id`'s `stream` ended.
        End {
            /// The command.
            id: u32,
            /// The stream.
            stream: u8,
        },
        /// The port ended between frames.
        Closed,
    }

    /// Writes `data` as frames of `id`'s `stream` (empty: the stream's end) in one `write_all` each.
    pub fn write(to: &mut impl Write, id: u32, stream: u8, data: &[u8]) -> io::Result<()> {
        let head = |len: usize| {
            let mut h = [0u8; HEADER];
            h[..4].copy_from_slice(&id.to_le_bytes());
            h[4] = stream;
            h[5..].copy_from_slice(&(len as u32).to_le_bytes());
            h
        };
        if data.is_empty() {
            return to.write_all(&head(0));
        }
        for chunk in data.chunks(MAX_FRAME) {
            let mut buf = Vec::with_capacity(HEADER + chunk.len());
            buf.extend_from_slice(&head(chunk.len()));
            buf.extend_from_slice(chunk);
            to.write_all(&buf)?;
        }
        Ok(())
    }

    /// Reads one frame into `buf` (which must hold [`MAX_FRAME`] bytes); a longer frame or a stream number
    /// above 2 is refused (a hostile peer).
    pub fn read(from: &mut impl Read, buf: &mut [u8]) -> io::Result<Frame> {
        let mut head = [0u8; HEADER];
        if !crate::protocol::frames::read_head(from, &mut head)? {
            return Ok(Frame::Closed);
        }
        let id = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let stream = head[4];
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if stream > 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of stream {stream} (0 to 2 exist)"),
            ));
        }
        if len == 0 {
            return Ok(Frame::End { id, stream });
        }
        if len > MAX_FRAME || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
            ));
        }
        from.read_exact(&mut buf[..len])?;
        Ok(Frame::Data { id, stream, len })
    }
}

#[cfg(test)]
mod tests {
    use super::mux::{self, Frame};
    use super::*;
    use crate::protocol::frames::MAX_FRAME;

    #[test]
    fn mux_frames_round_trip_and_hostile_ones_are_refused() {
        let mut wire = Vec::new();
        mux::write(&mut wire, 7, 1, b"out").unwrap();
        mux::write(&mut wire, 9, 2, &vec![1u8; MAX_FRAME + 1]).unwrap();
        mux::write(&mut wire, 7, 1, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = vec![0u8; MAX_FRAME];
        let f = |id, stream, len| Frame::Data { id, stream, len };
        assert_eq!(mux::read(&mut r, &mut buf).unwrap(), f(7, 1, 3));
        assert_eq!(&buf[..3], b"out");
        assert_eq!(mux::read(&mut r, &mut buf).unwrap(), f(9, 2, MAX_FRAME));
        assert_eq!(mux::read(&mut r, &mut buf).unwrap(), f(9, 2, 1));
        assert_eq!(
            mux::read(&mut r, &mut buf).unwrap(),
            Frame::End { id: 7, stream: 1 }
        );
        assert_eq!(mux::read(&mut r, &mut buf).unwrap(), Frame::Closed);
        let mut huge = vec![0u8; 5];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(mux::read(&mut &huge[..], &mut buf).is_err());
        let bad_stream = [0, 0, 0, 0, 3, 0, 0, 0, 0];
        assert!(mux::read(&mut &bad_stream[..], &mut buf).is_err());
        assert!(mux::read(&mut &[1u8, 0, 0][..], &mut buf).is_err());
    }

    #[test]
    fn requests_and_replies_round_trip_and_unknown_fields_are_refused() {
        let r = Request::Exec {
            id: 3,
            program: "sh".into(),
            arg0: Some("login-sh".into()),
            args: vec!["-c".into(), "true".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            stdin: true,
        };
        let line = r.to_line();
        assert_eq!(parse::<Request>(line.as_bytes(), REQUEST_PREFIX), Some(r));
        let up = Reply::Exited {
            id: 3,
            verdict: serde_json::json!({"status": "exited"}),
        };
        assert_eq!(
            parse::<Reply>(up.to_line().as_bytes(), REPLY_PREFIX),
            Some(up)
        );
        let odd = format!("{REQUEST_PREFIX}{{\"op\":\"stop\",\"grace_ms\":1,\"x\":2}}");
        assert_eq!(parse::<Request>(odd.as_bytes(), REQUEST_PREFIX), None);
        assert_eq!(parse::<Request>(b"SANDBOX-PING", REQUEST_PREFIX), None);
    }
}

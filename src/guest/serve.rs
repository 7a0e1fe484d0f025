//! Served runs: a warm VM runs one specification after another. Each run gets fresh namespaces and a fresh
//! cgroup from the namespace backend, as a cold run does; what stays is the booted kernel, the agent and the
//! shares it mounted. The program's streams travel as [`frames`](super::frames) over the same ports run after
//! run, each run's ending with an empty frame.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::thread::JoinHandle;

use super::{Channels, GuestError, RunSpec, mounts};
use crate::protocol::frames::{Frame, MAX_FRAME, read_frame, write_frame};
use crate::{Outcome, Stdio};

/// The state a warm VM keeps between runs.
#[derive(Default)]
pub(crate) struct Server {
    mounted: BTreeSet<String>,
    /// `eth0`'s configuration, made at the first run that asked for `network = "user"`.
    net: Option<crate::protocol::GuestNet>,
    served: usize,
    /// The previous run's stdin reader, which consumes the host's frames up to that run's end frame.
    stdin_drain: Option<JoinHandle<()>>,
}

fn port(file: &Option<File>) -> Result<Option<File>, GuestError> {
    file.as_ref()
        .map(File::try_clone)
        .transpose()
        .map_err(|e| GuestError::NoSpec(format!("duplicating a port descriptor: {e}")))
}

impl Server {
    /// How many runs were served.
    pub(crate) fn served(&self) -> usize {
        self.served
    }

    /// Runs one served specification.
    pub(crate) fn run(
        &mut self,
        spec: &RunSpec,
        channels: &Channels,
    ) -> Result<Outcome, GuestError> {
        self.served += 1;
        // The previous run's stdin must be consumed to its end frame before this run's frames are read.
        if let Some(t) = self.stdin_drain.take() {
            let _ = t.join();
        }
        for share in &spec.shares {
            if !self.mounted.contains(&share.tag) {
                mounts::mount_shares(std::slice::from_ref(share))?;
                self.mounted.insert(share.tag.clone());
            }
        }
        mounts::make_links(&spec.links)?;
        if let Some(net) = &spec.net
            && self.net.as_ref() != Some(net)
        {
            if self.net.is_some() {
                return Err(GuestError::BadSpec {
                    from: "control_port",
                    message:
                        "a warm VM's eth0 is configured once, and this run asks for another link"
                            .into(),
                });
            }
            super::network(net)?;
            self.net = Some(*net);
        }

        let (stdin_port, stdout_port, stderr_port) = (
            port(&channels.stdin)?,
            port(&channels.stdout)?,
            port(&channels.stderr)?,
        );
        let mut cmd = super::sandbox_for(spec);
        super::pvm_env(&mut cmd, spec);
        cmd.stdin(if stdin_port.is_some() {
            Stdio::Piped
        } else {
            Stdio::Null
        });
        if stdout_port.is_some() {
            cmd.stdout(Stdio::Piped);
        }
        if stderr_port.is_some() {
            cmd.stderr(Stdio::Piped);
        }
        super::clear_vector_registers();
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                // The host still sends this run's stdin frames and waits for the output end frames.
                if let Some(p) = stdin_port {
                    self.stdin_drain = Some(std::thread::spawn(move || relay_in(p, None)));
                }
                for p in [stdout_port, stderr_port].into_iter().flatten() {
                    end_stream(p);
                }
                // A sandbox that could not be set up is a child that has already ended; this is the
                // host process's own failure.
                return Err(e.into());
            }
        };
        if let Some(p) = stdin_port {
            let to = child.stdin.take();
            self.stdin_drain = Some(std::thread::spawn(move || relay_in(p, to)));
        }
        let mut outs = Vec::new();
        for (from, to) in [
            (child.stdout.take(), stdout_port),
            (child.stderr.take(), stderr_port),
        ] {
            if let (Some(from), Some(to)) = (from, to) {
                outs.push(std::thread::spawn(move || relay_out(from, to)));
            }
        }
        let outcome = child.wait();
        // The sandbox's processes are gone: the pipes are at their end, the relays finish.
        for t in outs {
            let _ = t.join();
        }
        Ok(outcome?)
    }
}

/// Host frames → the program's stdin, until this run's end frame. Bytes the program no longer takes are
/// dropped; the frames are always consumed to the end.
fn relay_in(mut port: File, mut to: Option<std::io::PipeWriter>) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match read_frame(&mut port, &mut buf) {
            Ok(Frame::Data(n)) => {
                if let Some(w) = &mut to
                    && w.write_all(&buf[..n]).is_err()
                {
                    to = None;
                }
            }
            Ok(Frame::End) | Ok(Frame::Closed) | Err(_) => return,
        }
    }
}

/// The program's output → frames, then the end frame.
fn relay_out(mut from: std::io::PipeReader, mut port: File) {
    use std::io::Read;
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_frame(&mut port, &buf[..n]).is_err() {
                    // The host is gone; keep reading so the program is not blocked on a full pipe.
                    continue;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    end_stream(port);
}

fn end_stream(mut port: File) {
    let _ = write_frame(&mut port, b"");
}

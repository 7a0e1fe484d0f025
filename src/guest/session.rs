//! A session in the VM ([`crate::protocol::session`]): the agent keeps one sandbox of the guest up (a
//! namespace [`Session`]) and runs the host's commands in it, several at once, their streams multiplexed on
//! the stdin and stdout ports, until the host stops the session or closes the control port.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use super::{Channels, GuestError, RunSpec, mounts, verdict};
use crate::protocol::frames::MAX_FRAME;
use crate::protocol::session::{MAX_COMMANDS, REQUEST_PREFIX, Reply, Request, mux, parse};
use crate::{BackendKind, Outcome, Session, Stage, Stdio};

/// The commands' stdin pipes, by id (removed at their end frame: the command sees end of file).
type Inputs = Arc<Mutex<HashMap<u32, std::io::PipeWriter>>>;

/// The agent's side of a VM session.
struct Served {
    session: Session,
    /// Writes on the control port, one line at a time.
    control: Arc<Mutex<File>>,
    /// The stdout port, one frame at a time.
    out: Arc<Mutex<File>>,
    inputs: Inputs,
    /// The running commands: id → pid (the leader of the command's process group).
    running: Arc<Mutex<HashMap<u32, u32>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dup(f: &File, what: &str) -> Result<File, GuestError> {
    f.try_clone()
        .map_err(|e| GuestError::NoSpec(format!("duplicating the {what} port: {e}")))
}

/// Serves a session until it is stopped (its verdict) or the host goes away (`None`: nobody to tell).
pub(crate) fn serve(
    spec: &RunSpec,
    channels: &Channels,
    lines: &mut BufReader<&File>,
) -> Result<Option<Outcome>, GuestError> {
    mounts::mount_shares(&spec.shares)?;
    mounts::make_links(&spec.links)?;
    if let Some(net) = &spec.net {
        super::network(net)?;
    }
    let control: &File = lines.get_ref();
    let (Some(out), Some(input)) = (&channels.stdout, &channels.stdin) else {
        return Err(GuestError::NoSpec(
            "a session needs the control, stdin and stdout ports".into(),
        ));
    };
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    if std::process::id() == 1
        && let Ok(v) = std::env::var("GLIBC_TUNABLES")
        && !spec.env.contains_key("GLIBC_TUNABLES")
    {
        env.push(("GLIBC_TUNABLES".into(), v.into()));
    }
    let session = Session::start_in_guest(spec.policy.clone(), &env, spec.cwd.as_deref())?;
    let served = Served {
        control: Arc::new(Mutex::new(dup(control, "control")?)),
        out: Arc::new(Mutex::new(dup(out, "stdout")?)),
        inputs: Arc::default(),
        running: Arc::default(),
        session,
    };
    let enforced = serde_json::to_value(served.session.enforced()).unwrap_or_default();
    served.reply(&Reply::Up { enforced });
    {
        let (input, inputs) = (dup(input, "stdin")?, served.inputs.clone());
        std::thread::spawn(move || relay_inputs(input, inputs));
    }
    loop {
        let line = match super::read_line(lines) {
            Ok(l) => l,
            // The host went away: everything in the session goes with it.
            Err(_) => {
                let _ = served.session.kill();
                return Ok(None);
            }
        };
        match parse::<Request>(&line, REQUEST_PREFIX) {
            Some(Request::Exec {
                id,
                program,
                arg0,
                args,
                env,
                cwd,
                stdin,
            }) => {
                let argv = Argv {
                    program: &program,
                    arg0: arg0.as_deref(),
                    args: &args,
                };
                served.exec(id, argv, &env, cwd.as_deref(), stdin)
            }
            Some(Request::Signal { id: 0, signal }) => {
                let _ = served.session.signal_all(signal);
            }
            Some(Request::Signal { id, signal }) => {
                if let Some(&pid) = lock(&served.running).get(&id)
                    && pid > 0
                {
                    // SAFETY: kill(2) takes no pointers; the command leads its own process group.
                    unsafe { libc::kill(-(pid as i32), signal) };
                }
            }
            Some(Request::Stop { grace_ms }) => {
                let grace = std::time::Duration::from_millis(grace_ms.min(3_600_000));
                let mut outcome = served.session.stop(grace)?;
                outcome.backend = BackendKind::Vm;
                return Ok(Some(outcome));
            }
            None => super::say("sandbox-init: a session request that is not one; ignored"),
        }
    }
}

/// A command's program, its `argv[0]` when another, and its arguments.
struct Argv<'a> {
    program: &'a str,
    arg0: Option<&'a str>,
    args: &'a [String],
}

impl Served {
    fn reply(&self, r: &Reply) {
        let c = lock(&self.control);
        if let Err(e) = verdict::port_write(c.as_fd(), r.to_line().as_bytes()) {
            super::say(&format!("sandbox-init: a session reply was lost: {e}"));
        }
    }

    /// Starts a command, and a thread that relays its output and sends its verdict.
    fn exec(
        &self,
        id: u32,
        argv: Argv<'_>,
        env: &[(String, String)],
        cwd: Option<&str>,
        stdin: bool,
    ) {
        let failed = |message: String| {
            let f = crate::SetupFailure {
                stage: Stage::Prepare,
                errno: None,
                message,
            };
            Outcome::setup_failed(f, BackendKind::Vm)
        };
        let busy = lock(&self.running).len() >= MAX_COMMANDS;
        let spawned = if busy {
            Err(failed(format!(
                "the session runs {MAX_COMMANDS} commands already"
            )))
        } else if lock(&self.running).contains_key(&id) {
            Err(failed(format!("command id {id} is in use")))
        } else {
            let mut cmd = self.session.command(argv.program);
            if let Some(a) = argv.arg0 {
                cmd.arg0(a);
            }
            cmd.args(argv.args)
                .stdin(if stdin { Stdio::Piped } else { Stdio::Null })
                .stdout(Stdio::Piped)
                .stderr(Stdio::Piped);
            for (k, v) in env {
                cmd.env(k, v);
            }
            if let Some(d) = cwd {
                cmd.current_dir(d);
            }
            // A command that could not be set up is a child that has already ended, with its verdict:
            // answered as one that never started (no process, no Started reply).
            match cmd.spawn() {
                Ok(mut child) => match child.try_wait() {
                    Ok(Some(o)) if matches!(o.status, crate::Status::SetupFailed(_)) => Err(o),
                    _ => Ok(child),
                },
                Err(e) => Err(failed(e.to_string())),
            }
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(outcome) => {
                // The host waits for both end frames and the verdict, as for a command that ran.
                for stream in [1, 2] {
                    let _ = mux::write(&mut *lock(&self.out), id, stream, b"");
                }
                self.reply(&Reply::Exited {
                    id,
                    verdict: outcome.report_json(),
                });
                return;
            }
        };
        lock(&self.running).insert(id, child.id());
        if let Some(w) = child.stdin.take() {
            lock(&self.inputs).insert(id, w);
        }
        self.reply(&Reply::Started { id });
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays: Vec<_> = [(child.stdout.take(), 1u8), (child.stderr.take(), 2u8)]
            .into_iter()
            .map(|(from, stream)| {
                let (out, done) = (self.out.clone(), done.clone());
                std::thread::spawn(move || relay_output(from, id, stream, &out, &done))
            })
            .collect();
        let (control, running, inputs) = (
            self.control.clone(),
            self.running.clone(),
            self.inputs.clone(),
        );
        std::thread::spawn(move || {
            let outcome = child.wait();
            lock(&running).remove(&id);
            done.store(true, std::sync::atomic::Ordering::Release);
            for r in relays {
                let _ = r.join();
            }
            lock(&inputs).remove(&id);
            let mut outcome = outcome.unwrap_or_else(|e| {
                let f = crate::SetupFailure {
                    stage: Stage::Init,
                    errno: None,
                    message: format!("waiting for the command: {e}"),
                };
                Outcome::setup_failed(f, BackendKind::Vm)
            });
            outcome.backend = BackendKind::Vm;
            let line = Reply::Exited {
                id,
                verdict: outcome.report_json(),
            }
            .to_line();
            let c = lock(&control);
            let _ = verdict::port_write(c.as_fd(), line.as_bytes());
        });
    }
}

/// The host's stdin frames → the commands' stdin pipes. Bytes for a command that ended or stopped reading
/// are dropped.
fn relay_inputs(mut port: File, inputs: Inputs) {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        match mux::read(&mut port, &mut buf) {
            Ok(mux::Frame::Data { id, len, .. }) => {
                let mut map = lock(&inputs);
                if let Some(w) = map.get_mut(&id)
                    && w.write_all(&buf[..len]).is_err()
                {
                    map.remove(&id);
                }
            }
            Ok(mux::Frame::End { id, .. }) => {
                lock(&inputs).remove(&id);
            }
            Ok(mux::Frame::Closed) | Err(_) => return,
        }
    }
}

/// A command's output pipe → frames of `stream`, then the end frame. Reads until end of file, or, once the
/// command ended (`done`), until nothing more is buffered: a process it left running in the session may keep
/// the pipe open.
fn relay_output(
    from: Option<std::io::PipeReader>,
    id: u32,
    stream: u8,
    out: &Mutex<File>,
    done: &std::sync::atomic::AtomicBool,
) {
    if let Some(mut from) = from {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let mut pfd = [libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ended = done.load(std::sync::atomic::Ordering::Acquire);
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 1, 100) };
            if n == 0 {
                if ended {
                    break;
                }
                continue;
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // A host that stopped reading loses the output; the pipe is still drained.
                    let _ = mux::write(&mut *lock(out), id, stream, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = mux::write(&mut *lock(out), id, stream, b"");
}

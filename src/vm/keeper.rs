//! A VM session that outlives its creator ([`Session::create`](crate::Session::create) with
//! [`Detach::vm`](crate::Detach::vm)): a keeper process (`sandbox-init keep-session`, the agent's static binary
//! in another role) holds the VM session's host side and serves the same control protocol on the session's
//! socket as a namespace session's init, so [`Session::attach`](crate::Session::attach), an OCI runtime's
//! `start`, `exec`, `kill` and `delete` work on it unchanged. Its commands run in the guest: `STARTED` carries
//! no pidfd, and a signal for one is a request. The keeper writes the session's end into the status file and
//! exits with its program's code, as the init does.
//!
//! Descriptors the creator hands the keeper: 0-2 the program's streams, 3 the listening socket, 4 the status
//! file, 5 the report pipe (`OK {json}` or `ERR message`, once the VM session is up or failed), 6 the
//! configuration (JSON, read to its end).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::session::{VmExecRun, VmSession, VmShared};
use crate::backend::{Run, VmEngine};
use crate::namespace::child_msg as msg;
use crate::namespace::session::detached::{Created, listen_at, start_time};
use crate::namespace::{Launch, sys};
use crate::outcome::{Enforced, Outcome, SetupFailure, Stage, Status};
use crate::policy::Policy;

const LISTENER: RawFd = 3;
const STATUS: RawFd = 4;
const REPORT: RawFd = 5;
const CONFIG: RawFd = 6;
/// The largest configuration or report read.
const MAX_JSON: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
struct Config {
    policy: Policy,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    program: Vec<OsString>,
    wait_start: bool,
    engine: String,
}

fn failure(message: String) -> SetupFailure {
    SetupFailure {
        stage: Stage::Vm,
        errno: None,
        message,
    }
}

/// Creator side: makes the socket and status file, starts the keeper with them and waits for its report.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    policy: &Policy,
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
    program: &[OsString],
    wait_start: bool,
    engine: VmEngine,
    socket_path: &Path,
    status_file: &Path,
    stdio: [RawFd; 3],
) -> Result<Created, SetupFailure> {
    if program.is_empty() && wait_start {
        return Err(failure(
            "a VM session that waits for its start needs a program of its own".into(),
        ));
    }
    let (kernel, agent) = super::assets::assets().map_err(|e| {
        failure(format!(
            "the keeper of a VM session is the guest agent: {e}"
        ))
    })?;
    let (listener, status, made) = listen_at(socket_path, status_file)?;
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failure(format!("pipe2: {e}")))
    };
    let (report_r, report_w) = pipe()?;
    let (config_r, config_w) = pipe()?;
    // Above the numbers they go to, so that no dup2 below clobbers another source.
    let high = |fd: &dyn AsFd| -> Result<OwnedFd, SetupFailure> {
        let n = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
            .map_err(|e| failure(format!("fcntl(F_DUPFD_CLOEXEC): {e}")))?;
        // SAFETY: fcntl just returned this new descriptor, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    let moved = [
        high(&listener)?,
        high(&status)?,
        high(&report_w)?,
        high(&config_r)?,
    ];
    drop((report_w, config_r));
    let raw: Vec<RawFd> = moved.iter().map(AsRawFd::as_raw_fd).collect();
    let stream = |fd: RawFd| -> Result<std::process::Stdio, SetupFailure> {
        if fd < 0 {
            return Ok(std::process::Stdio::inherit());
        }
        Ok(std::process::Stdio::from(high(
            // SAFETY: the caller's descriptor, borrowed for the duplication only.
            &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        )?))
    };
    let mut cmd = std::process::Command::new(&agent);
    // The keeper finds the same assets as this process, however this process was told them.
    cmd.env("SANDBOX_KERNEL", &kernel)
        .env("SANDBOX_AGENT", &agent);
    if let Some(qemu) = super::qemu::find_qemu() {
        cmd.env("SANDBOX_QEMU", qemu);
    }
    cmd.arg("keep-session")
        .stdin(stream(stdio[0])?)
        .stdout(stream(stdio[1])?)
        .stderr(stream(stdio[2])?);
    // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe, on descriptors
    // that stay open in the parent until the spawn returned.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                if libc::dup2(fd, LISTENER + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failure(format!("starting the keeper {agent:?}: {e}")))?;
    drop(moved);
    let config = Config {
        policy: policy.clone(),
        env: env.to_vec(),
        cwd: cwd.map(Path::to_path_buf),
        program: program.to_vec(),
        wait_start,
        engine: match engine {
            VmEngine::Auto => "auto",
            VmEngine::Qemu => "qemu",
            VmEngine::Builtin => "builtin",
        }
        .into(),
    };
    let json = serde_json::to_vec(&config)
        .map_err(|e| failure(format!("the keeper's configuration: {e}")))?;
    let written = File::from(config_w).write_all(&json);
    let mut report = Vec::new();
    let _ = File::from(report_r).take(MAX_JSON).read_to_end(&mut report);
    let text = String::from_utf8_lossy(&report);
    let ok = written.is_ok().then(|| text.strip_prefix("OK ")).flatten();
    let Some(json) = ok else {
        let _ = child.kill();
        let _ = child.wait();
        let why = text
            .strip_prefix("ERR ")
            .unwrap_or(&text)
            .trim()
            .to_string();
        return Err(failure(if why.is_empty() {
            "the VM session's keeper ended without a word".into()
        } else {
            why
        }));
    };
    let enforced: Enforced = serde_json::from_str(json.trim()).unwrap_or_default();
    let pid = child.id();
    made.disarm();
    // Not reaped here: whoever adopts this process's orphans reaps the keeper (as a namespace session's init).
    std::mem::forget(child);
    Ok(Created {
        pid,
        start_time: start_time(pid).unwrap_or(0),
        cgroups: Vec::new(),
        env: env.to_vec(),
        cwd: cwd.map(Path::to_path_buf),
        enforced,
    })
}

/// The keeper's state.
struct Keeper {
    vm: Mutex<Option<VmSession>>,
    shared: Arc<VmShared>,
    policy: Policy,
    /// The program's command id, once started.
    program: Mutex<Option<u32>>,
    program_argv: Vec<OsString>,
    program_env: Vec<(OsString, OsString)>,
    program_cwd: Option<PathBuf>,
    status: Mutex<File>,
    started: Instant,
    /// Set by the first of the ends (the program's, a STOP, the VM's): the others wait for the exit.
    ending: std::sync::atomic::AtomicBool,
}

/// The keeper's entry point (`sandbox-init keep-session`).
pub(crate) fn main() -> ! {
    // SAFETY: setting dispositions to SIG_IGN passes no handler code; a terminal's signals must not end the
    // session (a namespace session's init ignores them as PID 1 too).
    unsafe {
        for s in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    // SAFETY: the creator handed these descriptors to this process at these numbers; nothing else owns them.
    let (listener, status, report, config) = unsafe {
        (
            OwnedFd::from_raw_fd(LISTENER),
            File::from_raw_fd(STATUS),
            File::from_raw_fd(REPORT),
            File::from_raw_fd(CONFIG),
        )
    };
    let mut bytes = Vec::new();
    let cfg: Result<Config, String> = config
        .take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
    let mut report = Some(report);
    let say = |report: &mut Option<File>, text: String| {
        if let Some(mut r) = report.take() {
            let _ = r.write_all(text.as_bytes());
        }
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            say(&mut report, format!("ERR the keeper's configuration: {e}"));
            std::process::exit(125)
        }
    };
    let engine = super::engine::Engine::pick(match cfg.engine.as_str() {
        "qemu" => VmEngine::Qemu,
        "builtin" => VmEngine::Builtin,
        _ => VmEngine::Auto,
    });
    let launch = Launch {
        program: OsStr::new(""),
        arg0: None,
        args: &[],
        env: &cfg.env,
        cwd: cfg.cwd.as_deref(),
        policy: &cfg.policy,
        stdio: [-1; 3],
        extra_fds: &[],
        guest: false,
        serve: None,
    };
    // The user's snapshot cache, as a cold run's by default.
    let cache = crate::SnapshotCache::User.dir();
    let vm = match super::session::start(&launch, engine, cache.as_deref()) {
        Ok(vm) => vm,
        Err(f) => {
            say(&mut report, format!("ERR {}", f.message));
            std::process::exit(125)
        }
    };
    let enforced = serde_json::to_string(&vm.enforced).unwrap_or_default();
    let keeper = Arc::new(Keeper {
        shared: vm.shared.clone(),
        vm: Mutex::new(Some(vm)),
        policy: cfg.policy.clone(),
        program: Mutex::new(None),
        program_argv: cfg.program.clone(),
        program_env: cfg.env.clone(),
        program_cwd: cfg.cwd.clone(),
        status: Mutex::new(status),
        started: Instant::now(),
        ending: std::sync::atomic::AtomicBool::new(false),
    });
    if !cfg.program.is_empty()
        && !cfg.wait_start
        && let Err(f) = keeper.start_program()
    {
        say(&mut report, format!("ERR {}", f.message));
        std::process::exit(125)
    }
    say(&mut report, format!("OK {enforced}"));
    // The session ends with its VM.
    {
        let k = keeper.clone();
        std::thread::spawn(move || {
            while k.shared.running() {
                std::thread::sleep(Duration::from_millis(200));
            }
            k.end(libc::SIGKILL);
        });
    }
    let _ = nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    loop {
        match socket::accept(&listener) {
            Ok(conn) => {
                let k = keeper.clone();
                std::thread::spawn(move || k.serve(conn));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw wait status for a verdict's status (what the namespace protocol carries).
fn raw_status(s: &Status) -> i32 {
    match s {
        Status::Exited(c) => (c & 0xff) << 8,
        Status::Signaled(sig) => *sig & 0x7f,
        _ => libc::SIGKILL,
    }
}

impl Keeper {
    /// Runs a command in the VM session with the given streams; returns its id once it started, or why it
    /// did not.
    fn exec(
        &self,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        stdio: [RawFd; 3],
    ) -> Result<VmExecRun, Box<Outcome>> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            Outcome::setup_failed(failure("no program".into()), crate::BackendKind::Vm)
        })?;
        let launch = Launch {
            program,
            arg0: None,
            args,
            env,
            cwd,
            policy: &self.policy,
            stdio,
            extra_fds: &[],
            guest: false,
            serve: None,
        };
        let run = super::session::exec(&self.shared, &launch)
            .map_err(|f| Box::new(Outcome::setup_failed(f, crate::BackendKind::Vm)))?;
        if run.wait_started(Duration::from_secs(300)) {
            Ok(run)
        } else {
            Err(Box::new(
                Box::new(run)
                    .finish(Duration::ZERO, false)
                    .unwrap_or_else(|e| {
                        Outcome::setup_failed(failure(e.to_string()), crate::BackendKind::Vm)
                    }),
            ))
        }
    }

    fn start_program(self: &Arc<Self>) -> Result<u32, SetupFailure> {
        let mut program = lock(&self.program);
        if program.is_some() {
            return Err(SetupFailure {
                stage: Stage::Init,
                errno: Some(libc::EALREADY),
                message: "started already".into(),
            });
        }
        let run = self
            .exec(
                &self.program_argv,
                &self.program_env,
                self.program_cwd.as_deref(),
                [0, 1, 2],
            )
            .map_err(|o| match o.status {
                Status::SetupFailed(f) => f,
                s => failure(format!("the program ended at once: {s:?}")),
            })?;
        let id = run.id();
        *program = Some(id);
        // The keeper's own copies of the program's streams go: the program's end is their end.
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors of this process; no memory is passed.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let k = self.clone();
        std::thread::spawn(move || {
            let outcome = drive(run, k.started);
            k.end(raw_status(&outcome.status));
        });
        Ok(id)
    }

    /// Ends the session: its VM stopped, `raw` (a wait status) in the status file, the keeper's exit.
    fn end(&self, raw: i32) -> ! {
        if self.ending.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Another end is under way: its status and exit code are the session's.
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        self.finish(raw)
    }

    /// [`Keeper::end`] for the one caller that set `ending`.
    fn finish(&self, raw: i32) -> ! {
        let vm = lock(&self.vm).take();
        if let Some(vm) = vm {
            let _ = vm.stop(Duration::ZERO, self.started.elapsed());
        }
        let _ = lock(&self.status).write_all(&msg::encode([msg::EXITED, raw as u32, 0, 0]));
        let code = if libc::WIFEXITED(raw) {
            libc::WEXITSTATUS(raw)
        } else {
            128 + libc::WTERMSIG(raw)
        };
        std::process::exit(code)
    }

    /// Serves one connection's requests until it ends.
    fn serve(self: Arc<Self>, conn: OwnedFd) {
        let mut buf = vec![0u8; crate::namespace::child::serve::MAX_REQUEST];
        loop {
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let (n, fds) = match socket::recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
                Ok(m) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(got) = c {
                                // SAFETY: the kernel just installed these descriptors for us.
                                fds.extend(
                                    got.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    (m.bytes, fds)
                }
            };
            if n == 0 {
                return;
            }
            if n < msg::LEN {
                continue;
            }
            let head: [u8; msg::LEN] = buf[..msg::LEN].try_into().expect("LEN bytes");
            let words = msg::decode(&head);
            let reply_to = fds.first().map(|f| f.as_raw_fd());
            match words {
                [msg::EXEC, ncand, nargs, nenv] if fds.len() == 4 => {
                    let Some((cwd, argv, env)) = parse_exec(&buf[msg::LEN..n], ncand, nargs, nenv)
                    else {
                        reply(
                            fds[0].as_raw_fd(),
                            [msg::SETUP_FAILED, 0, 0, libc::EINVAL as u32],
                        );
                        continue;
                    };
                    let stdio = [fds[1].as_raw_fd(), fds[2].as_raw_fd(), fds[3].as_raw_fd()];
                    match self.exec(&argv, &env, Some(&cwd), stdio) {
                        Ok(run) => {
                            let reply_fd = fds.into_iter().next().expect("four descriptors");
                            reply(reply_fd.as_raw_fd(), [msg::STARTED, run.id(), 0, 0]);
                            let started = Instant::now();
                            std::thread::spawn(move || {
                                let o = drive(run, started);
                                for d in &o.denied_syscalls {
                                    if let Some(nr) = crate::seccomp::syscall_number(&d.syscall) {
                                        reply(
                                            reply_fd.as_raw_fd(),
                                            [msg::DENIED, nr as u32, d.count, 0],
                                        );
                                    }
                                }
                                let kib = o.usage.peak_memory_bytes.unwrap_or(0) / 1024;
                                reply(
                                    reply_fd.as_raw_fd(),
                                    [msg::USAGE, kib.min(u32::MAX as u64) as u32, 0, 0],
                                );
                                let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
                                reply(
                                    reply_fd.as_raw_fd(),
                                    [
                                        msg::EXITED,
                                        raw_status(&o.status) as u32,
                                        ms(o.usage.cpu_user),
                                        ms(o.usage.cpu_sys),
                                    ],
                                );
                            });
                        }
                        Err(o) => {
                            let (stage, errno) = match &o.status {
                                Status::SetupFailed(f) => (
                                    Stage::ALL.iter().position(|s| *s == f.stage).unwrap_or(0)
                                        as u32,
                                    f.errno.unwrap_or(libc::ENOENT) as u32,
                                ),
                                _ => (0, libc::EIO as u32),
                            };
                            reply(fds[0].as_raw_fd(), [msg::SETUP_FAILED, stage, 0, errno]);
                        }
                    }
                }
                [msg::START, ..] => {
                    let Some(to) = reply_to else { continue };
                    match self.start_program() {
                        Ok(id) => reply(to, [msg::STARTED, id, 0, 0]),
                        Err(f) => reply(
                            to,
                            [msg::SETUP_FAILED, 0, 0, f.errno.unwrap_or(libc::EIO) as u32],
                        ),
                    }
                }
                [msg::SIGNAL, sig, mode, id] => {
                    let sig = sig as i32;
                    let program = *lock(&self.program);
                    let _ = match (mode, program) {
                        (2, _) => self.shared.signal(id, sig),
                        (0, Some(p)) => self.shared.signal(p, sig),
                        _ => self.shared.signal_all(sig),
                    };
                }
                [msg::STOP, grace_ms, ..] => {
                    if self.ending.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        continue;
                    }
                    let vm = lock(&self.vm).take();
                    if let Some(vm) = vm {
                        let _ = vm.stop(
                            Duration::from_millis(grace_ms as u64),
                            self.started.elapsed(),
                        );
                    }
                    self.finish(0);
                }
                _ => {}
            }
        }
    }
}

/// Waits for a command of the session to end; its verdict.
fn drive(mut run: VmExecRun, started: Instant) -> Outcome {
    loop {
        let mut pfd = [libc::pollfd {
            fd: run.wait_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let _ = sys::poll(&mut pfd, 1000);
        if run.ended() {
            break;
        }
    }
    Box::new(run)
        .finish(started.elapsed(), false)
        .unwrap_or_else(|e| Outcome::setup_failed(failure(e.to_string()), crate::BackendKind::Vm))
}

fn reply(fd: RawFd, words: [u32; 4]) {
    let bytes = msg::encode(words);
    let _ = socket::sendmsg::<()>(
        fd,
        &[std::io::IoSlice::new(&bytes)],
        &[] as &[ControlMessage],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

/// An EXEC request's working directory, argv and environment.
type ExecRequest = (PathBuf, Vec<OsString>, Vec<(OsString, OsString)>);

/// The strings of an EXEC request: its working directory, argv (the first PATH candidate's name is not
/// needed: the guest looks the program up itself) and environment.
fn parse_exec(body: &[u8], ncand: u32, nargs: u32, nenv: u32) -> Option<ExecRequest> {
    let mut strings = body.split(|&b| b == 0);
    let total = 1 + ncand as usize + nargs as usize + nenv as usize;
    let all: Vec<&[u8]> = strings.by_ref().take(total).collect();
    if all.len() != total || nargs == 0 {
        return None;
    }
    let cwd = PathBuf::from(OsStr::from_bytes(all[0]));
    let argv: Vec<OsString> = all[1 + ncand as usize..1 + ncand as usize + nargs as usize]
        .iter()
        .map(|a| OsStr::from_bytes(a).to_os_string())
        .collect();
    let env = all[1 + ncand as usize + nargs as usize..]
        .iter()
        .filter_map(|kv| {
            let i = kv.iter().position(|&b| b == b'=')?;
            Some((
                OsStr::from_bytes(&kv[..i]).to_os_string(),
                OsStr::from_bytes(&kv[i + 1..]).to_os_string(),
            ))
        })
        .collect();
    Some((cwd, argv, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_parse_and_malformed_ones_are_refused() {
        let body = b"/work\0/usr/bin/sh\0sh\0-c\0echo hi\0A=1\0B=x=y\0";
        let (cwd, argv, env) = parse_exec(body, 1, 3, 2).expect("a well-formed request");
        assert_eq!(cwd, Path::new("/work"));
        assert_eq!(argv, ["sh", "-c", "echo hi"]);
        assert_eq!(env, [("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        // Fewer strings than announced, no argv, absurd counts: refused, never a panic.
        assert!(parse_exec(body, 1, 3, 9).is_none());
        assert!(parse_exec(b"/\0", 0, 0, 0).is_none());
        assert!(parse_exec(body, u32::MAX, u32::MAX, u32::MAX).is_none());
        assert!(parse_exec(b"", 0, 1, 0).is_none());
        // A variable without `=` is skipped.
        let (_, _, env) = parse_exec(b"/\0true\0NOEQ\0", 0, 1, 1).unwrap();
        assert!(env.is_empty());
    }

    #[test]
    fn verdicts_become_the_wait_status_the_protocol_carries() {
        assert_eq!(raw_status(&Status::Exited(7)), 7 << 8);
        assert_eq!(raw_status(&Status::Signaled(libc::SIGTERM)), libc::SIGTERM);
        assert_eq!(raw_status(&Status::OomKilled), libc::SIGKILL);
        let raw = raw_status(&Status::Exited(300));
        assert!(libc::WIFEXITED(raw) && libc::WEXITSTATUS(raw) == 300 & 0xff);
    }
}

//! The container lifecycle on top of sandkasten's sessions: `create` makes a session that outlives the
//! runtime (its init is the container's pid, a child of the `create` process that its caller, conmon or a
//! containerd shim, adopts), `start` starts its program, `exec` runs more in it, `kill`, `delete`, `state`,
//! `ps`. A container's state is a directory `ROOT/ID` with `state.json`, the session's socket and its status
//! file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sandkasten::{Detach, Detached, DetachedState, Network, Session, Stdio};
use serde::{Deserialize, Serialize};

use crate::log::Log;
use crate::spec::{self, Hook, SpecError};
use crate::state::{State, Status, Timestamp};

/// A failure of a runtime command.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The id is not usable.
    #[error(
        "container id {0:?} is invalid: use letters, digits, '_', '-' and '.', starting with a letter or digit"
    )]
    BadId(String),
    /// No container has this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// A container has this id already.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// The bundle cannot be used.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The sandbox failed.
    #[error("{0}")]
    Sandbox(#[from] sandkasten::Error),
    /// The command does not fit the container's state.
    #[error("container {id:?} is {status}: {what}")]
    State {
        /// The container.
        id: String,
        /// Its state.
        status: &'static str,
        /// What the command needs.
        what: &'static str,
    },
    /// Asked for what this runtime does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A hook failed.
    #[error("{0}")]
    Hook(String),
    /// A file of the runtime's own could not be read or written.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { what, path, source }
}

/// What the runtime keeps of a container (`state.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    created: Timestamp,
    annotations: BTreeMap<String, String>,
    owner: String,
    /// The program was started.
    started: bool,
    /// The session (absent while `create` runs).
    session: Option<Detached>,
    /// The user the container's processes run as.
    uid: u32,
    gid: u32,
}

/// `create`'s options.
#[derive(Debug)]
pub struct CreateOptions {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where the container's pid is written.
    pub pid_file: Option<PathBuf>,
    /// Where a terminal's master is sent.
    pub console_socket: Option<PathBuf>,
    /// Descriptors beyond 0-2 to pass in (only 0 is supported).
    pub preserve_fds: u32,
}

/// `exec`'s options.
#[derive(Debug)]
pub struct ExecOptions {
    /// The process as a runtime-spec `process` JSON file.
    pub process: Option<PathBuf>,
    /// Return once it started (a relay waits for it).
    pub detach: bool,
    /// Where the relay's pid is written.
    pub pid_file: Option<PathBuf>,
    /// Where a terminal's master is sent.
    pub console_socket: Option<PathBuf>,
    /// A terminal.
    pub tty: bool,
    /// Working directory inside.
    pub cwd: Option<PathBuf>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `UID[:GID]` (must be the container's own).
    pub user: Option<String>,
    /// Descriptors beyond 0-2 to pass in (only 0 is supported).
    pub preserve_fds: u32,
    /// The command, when there is no process file.
    pub command: Vec<String>,
}

/// The runtime: where its containers' state lives.
#[derive(Debug)]
pub struct Runtime {
    root: PathBuf,
}

/// Removes a directory tree on drop unless disarmed (a failed `create` leaves nothing).
struct Undo(Option<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 1024
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Writes `contents` to `path` through a temporary file and a rename (readers never see half a file).
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot write", path))
}

impl Runtime {
    /// The runtime with its state in `root` (default: /run/sandbox-runtime for root, else
    /// $XDG_RUNTIME_DIR/sandbox-runtime, else /tmp/sandbox-runtime-UID), made 0700 if missing.
    pub fn new(root: Option<PathBuf>) -> Result<Runtime, RuntimeError> {
        let root = root.unwrap_or_else(|| {
            let uid = nix::unistd::geteuid();
            if uid.is_root() {
                PathBuf::from("/run/sandbox-runtime")
            } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
                PathBuf::from(d).join("sandbox-runtime")
            } else {
                PathBuf::from(format!("/tmp/sandbox-runtime-{uid}"))
            }
        });
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io("cannot create the state directory", &root))?;
        Ok(Runtime { root })
    }

    fn dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::BadId(id.into()));
        }
        Ok(self.root.join(id))
    }

    fn load(&self, id: &str) -> Result<Record, RuntimeError> {
        let path = self.dir(id)?.join("state.json");
        let text = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.into()));
            }
            r => r.map_err(io("cannot read", &path))?,
        };
        serde_json::from_slice(&text).map_err(|e| RuntimeError::Io {
            what: "corrupt state file",
            path,
            source: std::io::Error::other(e),
        })
    }

    fn save(&self, rec: &Record) -> Result<(), RuntimeError> {
        let json = serde_json::to_vec_pretty(rec).expect("a record serializes");
        write_atomic(&self.dir(&rec.id)?.join("state.json"), &json)
    }

    fn status(rec: &Record) -> Status {
        match &rec.session {
            None => Status::Creating,
            Some(d) => match d.state() {
                DetachedState::Running if rec.started => Status::Running,
                DetachedState::Running => Status::Created,
                _ => Status::Stopped,
            },
        }
    }

    fn oci_state(rec: &Record) -> State {
        let status = Runtime::status(rec);
        State {
            pid: match (&rec.session, status) {
                (Some(d), Status::Created | Status::Running) => d.pid as i32,
                _ => 0,
            },
            status,
            bundle: rec.bundle.clone(),
            rootfs: rec.rootfs.clone(),
            created: rec.created,
            annotations: rec.annotations.clone(),
            owner: rec.owner.clone(),
            ..State::new(rec.id.clone(), PathBuf::new(), PathBuf::new())
        }
    }

    /// `create`: the container's session, its program waiting for `start`.
    pub fn create(&self, id: &str, o: &CreateOptions, log: &Log) -> Result<(), RuntimeError> {
        let dir = self.dir(id)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists(id.into()));
            }
            r => r.map_err(io("cannot create", &dir))?,
        }
        let mut undo = Undo(Some(dir.clone()));
        if o.preserve_fds > 0 {
            return Err(RuntimeError::Unsupported(
                "--preserve-fds is not supported: a container gets its stdin, stdout and stderr only".into(),
            ));
        }
        let bundle = spec::load(&o.bundle)?;
        let t = bundle.translate()?;
        for n in &t.notes {
            log.note(n);
        }
        if !t.hooks.create_container.is_empty() || !t.hooks.start_container.is_empty() {
            return Err(RuntimeError::Unsupported(
                "hooks.createContainer and hooks.startContainer (run inside the container) are not supported; \
                 prestart, createRuntime, poststart and poststop are"
                    .into(),
            ));
        }
        let mut policy = t.policy.clone();
        if t.vm && t.netns_path.is_some() {
            // A VM has its own kernel: the host's network namespace cannot be joined from inside it.
            log.note(
                "the VM backend does not join linux.namespaces' network path: the container has the \
                 network its policy gives it inside the VM (loopback only)",
            );
        } else if let Some(ns) = &t.netns_path {
            // Joined before the sandbox is made: its processes stay in this network namespace (a new user
            // namespace could not join one the host owns).
            join_netns(ns)?;
            policy.network = Network::Host;
            log.note(&format!("the container joins the network namespace {ns:?}"));
        }
        let stdio = if t.terminal {
            let socket = o.console_socket.as_deref().ok_or_else(|| {
                RuntimeError::Unsupported(
                    "process.terminal needs --console-socket (where the terminal's master is sent)"
                        .into(),
                )
            })?;
            terminal(socket)?
        } else {
            [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit]
        };
        let [i, out, err] = stdio;

        let rootfs = policy
            .rootfs
            .as_ref()
            .and_then(|r| r.dir.clone())
            .unwrap_or_default();
        let mut rec = Record {
            id: id.into(),
            bundle: bundle.dir.clone(),
            rootfs,
            created: Timestamp(SystemTime::now()),
            annotations: bundle
                .spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            owner: String::new(),
            started: false,
            session: None,
            uid: t.process.uid,
            gid: t.process.gid,
        };
        self.save(&rec)?;
        let mut detach = Detach::new(dir.join("ctl.sock"), dir.join("status"))
            .program(t.process.args.iter().map(OsString::from))
            .current_dir(&t.process.cwd)
            .wait_start()
            .stdio(i, out, err);
        if t.vm {
            detach = detach.vm(sandkasten::VmEngine::Auto);
        }
        for (k, v) in &t.process.env {
            detach = detach.env(k, v);
        }
        let d = Session::create(policy, detach)?;
        let pid = d.pid;
        rec.session = Some(d);
        let done = self
            .save(&rec)
            .and_then(|()| match &o.pid_file {
                Some(p) => write_atomic(p, pid.to_string().as_bytes()),
                None => Ok(()),
            })
            .and_then(|()| {
                let state = Runtime::oci_state(&rec);
                run_hooks(&t.hooks.prestart, &state)?;
                run_hooks(&t.hooks.create_runtime, &state)
            });
        if let Err(e) = done {
            // The init is this process's child: kill and reap it, then nothing is left.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            if let Some(d) = &rec.session {
                let _ = d.remove();
            }
            return Err(e);
        }
        undo.0 = None;
        Ok(())
    }

    /// `start`: the created container's program runs.
    pub fn start(&self, id: &str, log: &Log) -> Result<(), RuntimeError> {
        let mut rec = self.load(id)?;
        let status = Runtime::status(&rec);
        if status != Status::Created {
            return Err(RuntimeError::State {
                id: id.into(),
                status: status_name(status),
                what: "only a created container can be started",
            });
        }
        let d = rec
            .session
            .as_ref()
            .expect("a created container has its session");
        Session::attach(d)?.start_program()?;
        rec.started = true;
        self.save(&rec)?;
        if let Ok(b) = spec::load(&rec.bundle)
            && let Ok(t) = b.translate()
            && let Err(e) = run_hooks(&t.hooks.poststart, &Runtime::oci_state(&rec))
        {
            log.note(&format!("a poststart hook failed: {e}"));
        }
        Ok(())
    }

    /// `state`.
    pub fn state(&self, id: &str) -> Result<State, RuntimeError> {
        Ok(Runtime::oci_state(&self.load(id)?))
    }

    /// `kill`: `signal` to the container's program (`all`: to every process of it). SIGKILL, and any
    /// signal before `start`, ends the whole container.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuntimeError> {
        let rec = self.load(id)?;
        let sig = parse_signal(signal)?;
        let status = Runtime::status(&rec);
        let Some(d) = rec
            .session
            .as_ref()
            .filter(|_| matches!(status, Status::Created | Status::Running))
        else {
            return Err(RuntimeError::State {
                id: id.into(),
                status: status_name(status),
                what: "only a created or running container can be signalled",
            });
        };
        if status == Status::Created || (sig == libc::SIGKILL && !all) {
            return kill_init(d);
        }
        let s = Session::attach(d)?;
        if all {
            s.signal_all(sig)?;
        } else {
            s.signal(sig)?;
        }
        Ok(())
    }

    /// `delete`: removes a stopped or created container (a running one with `force`), and everything it
    /// left: its state directory, its socket, its cgroup.
    pub fn delete(&self, id: &str, force: bool, log: &Log) -> Result<(), RuntimeError> {
        let rec = match self.load(id) {
            // As runc: deleting what is gone is no error with --force.
            Err(RuntimeError::NotFound(_)) if force => return Ok(()),
            r => r?,
        };
        let status = Runtime::status(&rec);
        if status == Status::Running && !force {
            return Err(RuntimeError::State {
                id: id.into(),
                status: "running",
                what: "stop it first, or delete --force",
            });
        }
        if let Some(d) = &rec.session {
            if matches!(status, Status::Created | Status::Running) {
                kill_init(d)?;
            }
            // Its end is collected by whoever adopted it; wait until it has ended.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while d.state() == DetachedState::Running && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            d.remove()?;
        }
        let dir = self.dir(id)?;
        std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))?;
        if let Ok(b) = spec::load(&rec.bundle)
            && let Ok(t) = b.translate()
        {
            let mut state = Runtime::oci_state(&rec);
            state.status = Status::Stopped;
            if let Err(e) = run_hooks(&t.hooks.poststop, &state) {
                log.note(&format!("a poststop hook failed: {e}"));
            }
        }
        Ok(())
    }

    /// `exec`: a process in the running container. Returns its exit code, or 0 with `detach` (a relay
    /// process, whose pid goes to `--pid-file`, waits for it and ends with its code: the caller adopts it).
    pub fn exec(&self, id: &str, o: &ExecOptions) -> Result<u8, RuntimeError> {
        let rec = self.load(id)?;
        let status = Runtime::status(&rec);
        let Some(d) = rec.session.as_ref().filter(|_| status == Status::Running) else {
            return Err(RuntimeError::State {
                id: id.into(),
                status: status_name(status),
                what: "exec needs a running container",
            });
        };
        if o.preserve_fds > 0 {
            return Err(RuntimeError::Unsupported(
                "--preserve-fds is not supported: a process gets its stdin, stdout and stderr only"
                    .into(),
            ));
        }
        let p = exec_process(o, &rec)?;
        let stdio = if p.terminal {
            let socket = o.console_socket.as_deref().ok_or_else(|| {
                RuntimeError::Unsupported("a terminal needs --console-socket".into())
            })?;
            Some(terminal(socket)?)
        } else {
            None
        };
        let spawn = |stdio: Option<[Stdio; 3]>| -> Result<sandkasten::SandboxChild, RuntimeError> {
            let s = Session::attach(d)?;
            let mut cmd = s.command(&p.args[0]);
            cmd.args(&p.args[1..]);
            for (k, v) in &p.env {
                cmd.env(k, v);
            }
            if let Some(c) = &p.cwd {
                cmd.current_dir(c);
            }
            if let Some([i, out, err]) = stdio {
                cmd.stdin(i).stdout(out).stderr(err);
            }
            let mut child = cmd.spawn()?;
            // A process that could not be started is an error of `exec` (as runc's), not an exit code.
            if let Some(o) = child.try_wait()?
                && let sandkasten::Status::SetupFailed(f) = o.status
            {
                return Err(sandkasten::Error::Setup(f).into());
            }
            Ok(child)
        };
        if !o.detach {
            let mut child = spawn(stdio)?;
            let outcome = child.wait()?;
            return Ok(outcome.status.exit_code().clamp(0, 255) as u8);
        }
        relay(o.pid_file.as_deref(), move || spawn(stdio))
    }

    /// `ps`: the host pids of the container's processes.
    pub fn ps(&self, id: &str, format: &str) -> Result<(), RuntimeError> {
        let rec = self.load(id)?;
        let status = Runtime::status(&rec);
        let pids = match (&rec.session, status) {
            (Some(d), Status::Created | Status::Running) => descendants(d.pid),
            _ => Vec::new(),
        };
        match format {
            "json" => println!("{}", serde_json::to_string(&pids).expect("pids serialize")),
            "table" => {
                println!("PID CMD");
                for p in pids {
                    let cmd =
                        std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                    println!("{p} {}", cmd.trim_end());
                }
            }
            other => {
                return Err(RuntimeError::Unsupported(format!(
                    "ps --format {other:?}: use table or json"
                )));
            }
        }
        Ok(())
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Creating => "being created",
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    }
}

/// Kills a container's init (the whole container ends with it).
fn kill_init(d: &Detached) -> Result<(), RuntimeError> {
    Ok(d.kill()?)
}

/// A signal by name (`TERM`, `SIGTERM`, `term`) or number.
fn parse_signal(s: &str) -> Result<i32, RuntimeError> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(RuntimeError::Unsupported(format!(
                "signal {n} does not exist"
            )))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| RuntimeError::Unsupported(format!("unknown signal {s:?}")))
}

/// The process an `exec` runs.
struct ExecProcess {
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    terminal: bool,
}

fn exec_process(o: &ExecOptions, rec: &Record) -> Result<ExecProcess, RuntimeError> {
    let bad = |m: String| RuntimeError::Unsupported(m);
    let (mut args, mut env, mut cwd, mut terminal, mut user) =
        (o.command.clone(), Vec::new(), o.cwd.clone(), o.tty, None);
    if let Some(path) = &o.process {
        let text = std::fs::read(path).map_err(io("cannot read the process file", path))?;
        let p: oci_spec::runtime::Process = serde_json::from_slice(&text).map_err(|e| {
            bad(format!(
                "the process file {path:?} is not a runtime-spec process: {e}"
            ))
        })?;
        args = p.args().clone().unwrap_or_default();
        for kv in p.env().clone().unwrap_or_default() {
            env.push(kv);
        }
        cwd = Some(p.cwd().clone());
        terminal = p.terminal().unwrap_or(false);
        user = Some((p.user().uid(), p.user().gid()));
    }
    env.extend(o.env.iter().cloned());
    if let Some(u) = &o.user {
        let (uid, gid) = match u.split_once(':') {
            Some((a, b)) => (a.parse().ok(), b.parse().ok()),
            None => (u.parse().ok(), Some(rec.gid)),
        };
        match (uid, gid) {
            (Some(a), Some(b)) => user = Some((a, b)),
            _ => return Err(bad(format!("--user {u:?}: give UID[:GID] as numbers"))),
        }
    }
    if let Some((uid, gid)) = user
        && (uid, gid) != (rec.uid, rec.gid)
    {
        return Err(bad(format!(
            "exec as uid {uid} gid {gid} is not supported: every process of this container runs as uid {} \
             gid {} (no capability to change it is kept)",
            rec.uid, rec.gid
        )));
    }
    if args.is_empty() {
        return Err(bad(
            "exec needs a command (args in --process, or after the id)".into(),
        ));
    }
    let env = env
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
            _ => Err(bad(format!("environment entry {kv:?} is not KEY=VALUE"))),
        })
        .collect::<Result<_, _>>()?;
    if cwd.as_ref().is_some_and(|c| !c.is_absolute()) {
        return Err(bad(format!(
            "the working directory {cwd:?} is not absolute"
        )));
    }
    Ok(ExecProcess {
        args,
        env,
        cwd,
        terminal,
    })
}

/// `exec --detach`: forks a relay that starts the process, tells this process it did (or why not), waits
/// for it and exits with its code; this process writes the relay's pid to `pid_file` and returns. The
/// relay is left to this process's caller (conmon or a shim adopts it and reaps it for the exit code).
fn relay(
    pid_file: Option<&Path>,
    spawn: impl FnOnce() -> Result<sandkasten::SandboxChild, RuntimeError>,
) -> Result<u8, RuntimeError> {
    let (mut rd, mut wr) = std::io::pipe().map_err(io("cannot make a pipe", Path::new("pipe")))?;
    // SAFETY: this process is single-threaded (the runtime's main thread only), so the child may run any
    // code; it leaves through process::exit.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(RuntimeError::Io {
            what: "cannot fork",
            path: PathBuf::new(),
            source: e.into(),
        }),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let code = match spawn() {
                Ok(mut child) => {
                    let _ = wr.write_all(b"ok");
                    drop(wr);
                    match child.wait() {
                        Ok(o) => o.status.exit_code().clamp(0, 255),
                        Err(_) => 255,
                    }
                }
                Err(e) => {
                    let _ = wr.write_all(e.to_string().as_bytes());
                    1
                }
            };
            std::process::exit(code)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(wr);
            let mut answer = String::new();
            let _ = rd.read_to_string(&mut answer);
            if answer != "ok" {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(RuntimeError::Unsupported(if answer.is_empty() {
                    "the exec relay ended without an answer".into()
                } else {
                    answer
                }));
            }
            if let Some(p) = pid_file {
                write_atomic(p, child.as_raw().to_string().as_bytes())?;
            }
            Ok(0)
        }
    }
}

/// Joins the network namespace at `path` (this thread, before the sandbox is cloned from it).
fn join_netns(path: &Path) -> Result<(), RuntimeError> {
    let f = std::fs::File::open(path).map_err(io("cannot open the network namespace", path))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| RuntimeError::Io {
        what: "cannot join the network namespace",
        path: path.into(),
        source: e.into(),
    })
}

/// A pseudo-terminal for the process: its master is sent to the console socket (as runc does), its
/// slave becomes the process's stdin, stdout and stderr.
fn terminal(socket: &Path) -> Result<[Stdio; 3], RuntimeError> {
    use nix::sys::socket as s;
    let pty = nix::pty::openpty(None, None).map_err(|e| RuntimeError::Io {
        what: "cannot open a pseudo-terminal",
        path: "/dev/ptmx".into(),
        source: e.into(),
    })?;
    let conn = s::socket(
        s::AddressFamily::Unix,
        s::SockType::Stream,
        s::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| RuntimeError::Io {
        what: "socket",
        path: socket.into(),
        source: e.into(),
    })?;
    let failed = |e: nix::Error| RuntimeError::Io {
        what: "cannot send the terminal to the console socket",
        path: socket.into(),
        source: e.into(),
    };
    let addr = s::UnixAddr::new(socket).map_err(failed)?;
    s::connect(conn.as_raw_fd(), &addr).map_err(failed)?;
    let fds = [pty.master.as_raw_fd()];
    s::sendmsg::<()>(
        conn.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[s::ControlMessage::ScmRights(&fds)],
        s::MsgFlags::empty(),
        None,
    )
    .map_err(failed)?;
    let slave: OwnedFd = pty.slave;
    let dup = |f: &OwnedFd| {
        f.try_clone()
            .map_err(io("cannot duplicate the terminal", Path::new("/dev/pts")))
    };
    Ok([
        Stdio::Fd(dup(&slave)?),
        Stdio::Fd(dup(&slave)?),
        Stdio::Fd(slave),
    ])
}

/// Runs hooks in order with the container's state on their stdin; the first that fails (or overruns its
/// timeout) is the error.
fn run_hooks(hooks: &[Hook], state: &State) -> Result<(), RuntimeError> {
    let json = serde_json::to_vec(state).expect("a state serializes");
    for h in hooks {
        let mut cmd = std::process::Command::new(&h.path);
        if let Some((argv0, rest)) = h.args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
            cmd.args(rest);
        }
        cmd.env_clear()
            .envs(h.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped());
        let failed = |m: String| RuntimeError::Hook(format!("hook {:?}: {m}", h.path));
        let mut child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json);
        }
        let deadline = h.timeout.map(|t| std::time::Instant::now() + t);
        let status = loop {
            match child.try_wait().map_err(|e| failed(e.to_string()))? {
                Some(s) => break s,
                None if deadline.is_some_and(|d| std::time::Instant::now() >= d) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed("timed out".into()));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        if !status.success() {
            return Err(failed(format!("ended with {status}")));
        }
    }
    Ok(())
}

/// `pid` and every process descended from it, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::{parse_signal, valid_id};

    #[test]
    fn ids_and_signals() {
        for good in ["a", "web-1", "x.y_z", "0abc"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "-a", ".", "..", "a/b", "a b", "é"] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}

//! `sandbox create`, `start`, `exec`, `stop`, `rm`, `ps`, `logs`: sessions that outlive the command that made
//! them (`sandkasten::Session::create`), shaped like docker's containers. Their state is kept by [`state`],
//! listed by [`ps`].

mod ps;
mod state;

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use sandbox_examples::host::{SignalFd, poll, pollin};
use sandkasten::image::ImageStore;
use sandkasten::{
    Detach, DetachedState, Outcome, SandboxChild, Session, SetupFailure, Stage, Status, Stdio,
    VmEngine,
};

use super::{BackendArg, EngineArg, PolicyArgs, SANDBOX_ERROR};
use state::{Record, State};

/// The signals `sandbox exec` passes on to its command.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

#[derive(clap::Args)]
pub struct StateArg {
    /// Where sessions are kept (default: $XDG_RUNTIME_DIR/sandbox/sessions, else /run/sandbox/sessions for
    /// root, else /tmp/sandbox-$UID/sessions). It must be this user's alone.
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
#[command(defer = true)]
pub enum SessionCommand {
    /// Make a session that outlives this command and print its id.
    ///
    /// With PROGRAM (or --image: the image's command) the session has a program, started by `sandbox
    /// start`, its output in `sandbox logs`; the session ends with it. Without, the session runs what
    /// `sandbox exec` asks until `sandbox stop`.
    Create(Box<CreateArgs>),
    /// Start a session's program.
    Start {
        #[command(flatten)]
        state: StateArg,
        /// The session: its name, its id, or the start of its id.
        session: String,
    },
    /// Run PROGRAM in a session with this process's stdin, stdout and stderr; exit with its code.
    Exec(ExecArgs),
    /// Stop sessions: SIGTERM to every process in them, SIGKILL to what is left after the grace time.
    Stop {
        #[command(flatten)]
        state: StateArg,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(
            short = 't',
            long = "time",
            value_name = "SECONDS",
            default_value = "10"
        )]
        time: f64,
        /// Names or ids.
        #[arg(required = true, value_name = "SESSION")]
        sessions: Vec<String>,
    },
    /// Remove ended sessions (their state, cgroup, log and name).
    Rm {
        #[command(flatten)]
        state: StateArg,
        /// Kill a session that still runs, then remove it.
        #[arg(short, long)]
        force: bool,
        /// Names or ids.
        #[arg(required = true, value_name = "SESSION")]
        sessions: Vec<String>,
    },
    /// List the sessions that run (or have not started their program yet).
    Ps {
        #[command(flatten)]
        state: StateArg,
        /// Ended sessions too.
        #[arg(short, long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print what a session's program wrote to its stdout and stderr.
    Logs {
        #[command(flatten)]
        state: StateArg,
        /// The session: its name, its id, or the start of its id.
        session: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// A name for the session, unique among this user's sessions (letters, digits, `_`, `.`, `-`).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    state: StateArg,
    /// Which backend keeps the session: `vm` runs it in a VM (a keeper process holds the VM); `auto` takes
    /// the namespace backend where the host gives its namespaces and limits, else the VM.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Which engine runs a VM session.
    #[arg(long = "vm-engine", value_enum, default_value = "auto")]
    vm_engine: EngineArg,
    #[command(flatten)]
    policy: PolicyArgs,
    /// The session's program and its arguments (with --image: optional, replacing the image's Cmd).
    #[arg(trailing_var_arg = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    state: StateArg,
    /// Set an environment variable (over the session's), or with KEY alone pass this process's own value in.
    /// Repeatable.
    #[arg(long, value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read variables from FILE (as `sandbox run --env-file`). Before --env. Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the session (default: the session's).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// The session: its name, its id, or the start of its id.
    session: String,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

pub fn main(command: SessionCommand) -> Result<ExitCode, String> {
    match command {
        SessionCommand::Create(args) => create(*args),
        SessionCommand::Start { state, session } => start(&open(&state)?, &session),
        SessionCommand::Exec(args) => exec(args),
        SessionCommand::Stop {
            state,
            time,
            sessions,
        } => {
            let grace = Duration::try_from_secs_f64(time)
                .map_err(|_| format!("--time {time}: give a number of seconds, 0 or more"))?;
            let state = open(&state)?;
            Ok(each(&sessions, |arg| stop(&state, arg, grace)))
        }
        SessionCommand::Rm {
            state,
            force,
            sessions,
        } => {
            let state = open(&state)?;
            Ok(each(&sessions, |arg| remove(&state, arg, force)))
        }
        SessionCommand::Ps { state, all, json } => ps::ps(&open(&state)?, all, json),
        SessionCommand::Logs { state, session } => logs(&open(&state)?, &session),
    }
}

fn open(arg: &StateArg) -> Result<State, String> {
    State::open(arg.state_dir.as_deref())
}

/// Runs `one` for every argument; prints each one done (as docker does), and each failure on a line of its
/// own; 125 when one failed.
fn each(args: &[String], mut one: impl FnMut(&str) -> Result<(), String>) -> ExitCode {
    let mut failed = false;
    for arg in args {
        match one(arg) {
            Ok(()) => println!("{arg}"),
            Err(e) => {
                eprintln!("sandbox: {arg}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(SANDBOX_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

/// A session directory (and name) made by `create`, removed again unless the session was made.
struct Making<'a> {
    state: &'a State,
    id: String,
    name: Option<String>,
    made: bool,
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        if self.made {
            return;
        }
        if let Some(name) = &self.name {
            let _ = self.state.release_name(name, &self.id);
        }
        let _ = self.state.remove_dir(&self.id);
    }
}

fn create(args: CreateArgs) -> Result<ExitCode, String> {
    if let Some(name) = &args.name
        && !state::valid_name(name)
    {
        return Err(format!(
            "--name {name:?}: a name is a letter or digit, then letters, digits, `_`, `.` or `-` (at most 64)"
        ));
    }
    let policy = super::build_policy(&args.policy)?;
    let env = super::parse_env(&args.policy.env_file, &args.policy.env)?;
    let state = open(&args.state)?;
    let mut making = Making {
        state: &state,
        id: state.new_session()?,
        name: None,
        made: false,
    };
    let id = making.id.clone();
    if let Some(name) = &args.name {
        state.claim_name(name, &id)?;
        making.name = Some(name.clone());
    }
    let dir = state.dir(&id);
    let has_program = !args.program.is_empty() || args.policy.image.is_some();
    let log = if has_program {
        let path = dir.join("log");
        let log = std::fs::File::options()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {path:?}: {e}"))?;
        Some(log)
    } else {
        None
    };
    let env = &env;
    let detach = |vm: Option<VmEngine>| -> Result<Detach, String> {
        let mut detach = Detach::new(dir.join("ctl.sock"), dir.join("status"));
        if let Some(engine) = vm {
            detach = detach.vm(engine);
        }
        for (k, v) in env {
            detach = detach.env(k, v);
        }
        if let Some(cwd) = &args.policy.cwd {
            detach = detach.current_dir(cwd);
        }
        if let Some(log) = &log {
            let dup = || {
                log.try_clone()
                    .map_err(|e| format!("cannot duplicate the log's descriptor: {e}"))
            };
            detach = detach.program(&args.program).wait_start().stdio(
                Stdio::Null,
                Stdio::Fd(dup()?.into()),
                Stdio::Fd(dup()?.into()),
            );
        }
        Ok(detach)
    };
    let engine = match args.vm_engine {
        EngineArg::Auto => VmEngine::Auto,
        EngineArg::Qemu => VmEngine::Qemu,
        EngineArg::Builtin => VmEngine::Builtin,
    };
    let session = match args.backend {
        BackendArg::Namespace => Session::create(policy, detach(None)?),
        BackendArg::Vm => Session::create(policy, detach(Some(engine))?),
        BackendArg::Auto => match Session::create(policy.clone(), detach(None)?) {
            // The host cannot give the session its namespaces or its required limits: the VM can.
            Err(sandkasten::Error::Setup(f))
                if matches!(f.stage, Stage::Namespaces | Stage::Cgroup) =>
            {
                Session::create(policy, detach(Some(engine))?).map_err(|v| match v {
                    sandkasten::Error::Setup(v) => sandkasten::Error::Setup(SetupFailure {
                        message: format!("{}; and the VM backend: {}", f.message, v.message),
                        ..v
                    }),
                    other => other,
                })
            }
            other => other,
        },
    }
    .map_err(|e| e.to_string())?;
    // Read once the image was found (reading it before would make a missing store).
    let program = has_program.then(|| shown_program(&args.policy, &args.program));
    let record = Record {
        id: id.clone(),
        name: args.name,
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        program,
        started: false,
        session,
    };
    if let Err(e) = state.save(&record) {
        // Unrecorded, the session could never be reached again: end it.
        if let Ok(s) = Session::attach(&record.session) {
            let _ = s.kill();
        }
        reap(record.session.pid);
        let _ = record.session.remove();
        return Err(e);
    }
    making.made = true;
    println!("{id}");
    // The session's init stays this process's child, unreaped: whoever adopts it when this process ends
    // reaps it once the session ends.
    Ok(ExitCode::SUCCESS)
}

/// Reaps the init of a session this process created (only after it was killed).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is writable.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
}

/// The program as `ps` shows it: PROGRAM, after the image's Entrypoint, or else the image's command (read
/// from the store; the library reads the same).
fn shown_program(p: &PolicyArgs, given: &[OsString]) -> Vec<String> {
    let given: Vec<String> = given
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(image) = &p.image else {
        return given;
    };
    let store = p.store.clone().unwrap_or_else(ImageStore::default_path);
    let Ok(info) = ImageStore::open(store).and_then(|s| s.get(image)) else {
        return given;
    };
    let mut argv = info.config.entrypoint.unwrap_or_default();
    if given.is_empty() {
        argv.extend(info.config.cmd.unwrap_or_default());
    } else {
        argv.extend(given);
    }
    argv
}

/// `NAME (ID)` or the id, for messages.
fn label(r: &Record) -> String {
    match &r.name {
        Some(n) => format!("{n} ({})", r.id),
        None => r.id.clone(),
    }
}

fn start(state: &State, arg: &str) -> Result<ExitCode, String> {
    let mut record = state.load(&state.find(arg)?)?;
    if record.program.is_none() {
        // An idle session: nothing to start.
        return Ok(ExitCode::SUCCESS);
    }
    if let DetachedState::Ended(how) = record.session.state() {
        return Err(format!(
            "session {} has ended ({}): its program cannot start again",
            label(&record),
            ps::Shown::ended(&how).text
        ));
    }
    if record.started {
        return Err(format!(
            "session {}: the session's program was started already",
            label(&record)
        ));
    }
    let session =
        Session::attach(&record.session).map_err(|e| format!("session {}: {e}", label(&record)))?;
    session
        .start_program()
        .map_err(|e| format!("session {}: {e}", label(&record)))?;
    record.started = true;
    state.save(&record)?;
    println!("{arg}");
    Ok(ExitCode::SUCCESS)
}

fn exec(args: ExecArgs) -> Result<ExitCode, String> {
    // Before anything else (no thread may take them with their default action): the forwarded signals are
    // read from a signalfd.
    let signals = SignalFd::block(&FORWARDED).map_err(|e| format!("blocking signals: {e}"))?;
    let state = open(&args.state)?;
    let record = state.load(&state.find(&args.session)?)?;
    if let DetachedState::Ended(how) = record.session.state() {
        return Err(format!(
            "session {} has ended ({}): nothing runs in it any more (`sandbox rm {}` removes it)",
            label(&record),
            ps::Shown::ended(&how).text,
            args.session
        ));
    }
    let session =
        Session::attach(&record.session).map_err(|e| format!("session {}: {e}", label(&record)))?;
    let (program, rest) = args.program.split_first().expect("clap requires a program");
    let mut cmd = session.command(program);
    cmd.args(rest);
    for (k, v) in super::parse_env(&args.env_file, &args.env)? {
        cmd.env(k, v);
    }
    if let Some(d) = &args.cwd {
        cmd.current_dir(d);
    }
    // This process's own streams, passed in as they are (a terminal stays a terminal).
    cmd.stdin(passed(std::io::stdin().as_fd())?)
        .stdout(passed(std::io::stdout().as_fd())?)
        .stderr(passed(std::io::stderr().as_fd())?);
    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let limited = record.session.policy.timeout.is_some();
            wait_forwarding(&mut child, &signals, limited)?
        }
        Err(e) => return Err(e.to_string()),
    };
    match &outcome.status {
        Status::TimedOut(limit) => eprintln!("sandbox: {}", super::timed_out(*limit)),
        Status::OomKilled => eprintln!(
            "sandbox: the command was killed: the session's memory limit was reached (out of memory)"
        ),
        _ => {}
    }
    if let Status::SetupFailed(f) = &outcome.status {
        eprintln!("sandbox: {f}");
    }
    Ok(ExitCode::from(
        outcome.status.exit_code().clamp(0, 255) as u8
    ))
}

/// A duplicate of one of this process's standard streams (`/dev/null` when it is closed).
fn passed(fd: BorrowedFd<'_>) -> Result<Stdio, String> {
    match fd.try_clone_to_owned() {
        Ok(fd) => Ok(Stdio::Fd(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(Stdio::Null),
        Err(e) => Err(format!("duplicating a standard stream: {e}")),
    }
}

/// Waits for a command, passing on the signals this process gets. `limited`: the session has a time limit,
/// which `try_wait` enforces.
fn wait_forwarding(
    child: &mut SandboxChild,
    signals: &SignalFd,
    limited: bool,
) -> Result<Outcome, String> {
    // The command's end wakes the wait at once (its descriptor, `AsFd`); a time limit needs a tick so that
    // `try_wait` enforces it.
    let tick = limited.then_some(Duration::from_millis(100));
    loop {
        if let Some(o) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(o);
        }
        let mut fds = vec![pollin(signals.fd.as_fd()), pollin(child.as_fd())];
        poll(&mut fds, tick).map_err(|e| format!("poll: {e}"))?;
        if fds[0].revents != 0 {
            let sig = signals
                .read()
                .map_err(|e| format!("reading a signal: {e}"))?;
            // It may have ended meanwhile.
            let _ = child.signal(sig);
        }
    }
}

fn stop(state: &State, arg: &str, grace: Duration) -> Result<(), String> {
    let record = state.load(&state.find(arg)?)?;
    end(&record, grace)
}

/// Stops a session that still runs (nothing to do for one that ended).
fn end(record: &Record, grace: Duration) -> Result<(), String> {
    if matches!(record.session.state(), DetachedState::Ended(_)) {
        return Ok(());
    }
    let stopped = Session::attach(&record.session).and_then(|s| s.stop(grace));
    match stopped {
        Ok(_) => Ok(()),
        // It ended by itself in between.
        Err(_) if matches!(record.session.state(), DetachedState::Ended(_)) => Ok(()),
        Err(e) => Err(format!("session {}: {e}", label(record))),
    }
}

fn remove(state: &State, arg: &str, force: bool) -> Result<(), String> {
    let record = state.load(&state.find(arg)?)?;
    if record.session.state() == DetachedState::Running {
        if !force {
            return Err(format!(
                "session {} is running: stop it first (`sandbox stop`), or `sandbox rm --force` kills it",
                label(&record)
            ));
        }
        end(&record, Duration::ZERO)?;
    }
    record
        .session
        .remove()
        .map_err(|e| format!("session {}: {e}", label(&record)))?;
    if let Some(name) = &record.name {
        state.release_name(name, &record.id)?;
    }
    state.remove_dir(&record.id)
}

fn logs(state: &State, arg: &str) -> Result<ExitCode, String> {
    let id = state.find(arg)?;
    let path = state.dir(&id).join("log");
    let mut log = match std::fs::File::open(&path) {
        Ok(f) => f,
        // An idle session has no program and no log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(format!("cannot open {path:?}: {e}")),
    };
    match std::io::copy(&mut log, &mut std::io::stdout().lock()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot copy {path:?} to stdout: {e}"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

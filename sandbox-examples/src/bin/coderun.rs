//! `coderun`: a judge-style runner for untrusted snippets, built on the `sandbox` crate.
//!
//! ```text
//! coderun --lang sh|python3|exe --time-limit SECONDS --memory SIZE [--output-limit BYTES]
//!         [--wall-limit SECONDS] [--stdin FILE] [FILE]
//! ```
//!
//! The source comes from FILE, or from standard input when FILE is absent (for `exe`, FILE is a compiled
//! program and is required). It is copied into a private host temp dir (removed afterwards, also on failure
//! and on SIGINT/SIGTERM/SIGHUP) and bound read-only into the sandbox at `/work/main.sh`, `/work/main.py` or
//! `/work/prog`; the copy makes it readable by the sandbox user whatever the original's permissions, and the
//! program cannot change under the run. The program's standard input is `--stdin FILE` when given, else
//! coderun's own standard input when the source came from FILE, else empty.
//!
//! One JSON object goes to standard output. `verdict` is one of `OK`, `RE` (non-zero exit or a signal), `TLE`
//! (CPU time over `--time-limit`, or wall time over `--wall-limit`), `MLE` (killed by the OOM killer at the
//! memory limit), `OLE` (more than `--output-limit` bytes on standard output: coderun stops reading and kills
//! the sandbox). Beside it: the program's stdout (truncated to the limit) and stderr (truncated to 64 KiB),
//! both decoded as UTF-8 with invalid bytes replaced; exit code or signal; wall/CPU time and peak memory;
//! whether the memory and pids limits were enforced and, when not, why (a cgroup this user may write is
//! needed; without one a big allocation simply succeeds, and no MLE is made up).
//!
//! Exit code: 0 whenever a verdict was produced, 2 for bad usage, 125 when the sandbox itself failed (the
//! JSON object then holds `error`), 128+N when coderun was interrupted by signal N (also with `error`).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sandbox_examples::host::SignalFd;
use sandbox_examples::lang::Lang;
use sandkasten::outcome::TimeLimit;
use sandkasten::{Network, Outcome, OutputLimit, Policy, Sandbox, Stage, Status, Stdio};
use serde_json::{Value, json};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Exit code for bad usage.
const USAGE_ERROR: u8 = 2;
/// Exit code when the sandbox failed.
const SANDBOX_ERROR: u8 = 125;
/// The program's working directory inside the sandbox: a small tmpfs of its own.
const WORK_DIR: &str = "/work";
/// Size of the `/work` tmpfs.
const WORK_SIZE: u64 = 16 << 20;
/// Size of the `/tmp` tmpfs.
const TMP_SIZE: u64 = 16 << 20;
/// Most processes and threads of the whole tree.
const PIDS: u64 = 64;
/// Open files per process.
const NOFILE: u64 = 256;
/// How much standard error is kept (the rest is counted and discarded).
const STDERR_LIMIT: u64 = 64 << 10;
/// The largest source accepted on standard input or from FILE (an `exe` is not limited).
const MAX_SOURCE: u64 = 16 << 20;
/// Signals that interrupt coderun: the sandbox is killed and the temp dir removed.
const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

#[derive(Parser)]
#[command(
    name = "coderun",
    version,
    about = "Run an untrusted snippet in a strict sandbox and print a judge verdict as JSON"
)]
struct Args {
    /// Language of the source.
    #[arg(long, value_enum)]
    lang: Lang,
    /// CPU time limit in seconds (the wall limit defaults to twice this plus one second).
    #[arg(long = "time-limit", value_name = "SECONDS")]
    time_limit: f64,
    /// Wall-clock limit in seconds.
    #[arg(long = "wall-limit", value_name = "SECONDS")]
    wall_limit: Option<f64>,
    /// Memory limit of the whole process tree (e.g. 64M, 1G; K/M/G/T are powers of 1024).
    #[arg(long, value_name = "SIZE")]
    memory: String,
    /// Most bytes of standard output (same suffixes as --memory).
    #[arg(long = "output-limit", value_name = "BYTES", default_value = "1M")]
    output_limit: String,
    /// The program's standard input.
    #[arg(long = "stdin", value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// The source (or, for exe, the compiled program); standard input when absent.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

/// A checked request.
struct Job {
    lang: Lang,
    cpu: Duration,
    wall: Duration,
    memory: u64,
    output_limit: usize,
    /// The source text, or for `exe` the path of the program.
    source: Source,
    stdin: StdinFrom,
}

enum Source {
    Text(Vec<u8>),
    Program(PathBuf),
}

enum StdinFrom {
    File(File),
    Inherit,
    Empty,
}

fn main() -> ExitCode {
    // Parsing errors exit with 2 (clap's own code for usage errors); --help and --version with 0.
    let args = Args::parse();
    let job = match Job::from_args(args) {
        Ok(j) => j,
        Err(msg) => {
            eprintln!("coderun: {msg}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match run(job) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("coderun: {}", failure.message());
            println!("{}", json!({ "verdict": null, "error": failure.json() }));
            ExitCode::from(failure.exit_code())
        }
    }
}

/// A size (`64M`, `64MiB`, `4096`): the library's one parser, as policies and the `sandbox` CLI read them.
fn parse_size(text: &str) -> Result<u64, String> {
    sandkasten::policy::parse_size(text).map_err(|e| e.to_string())
}

fn seconds(flag: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{flag} {s}: give a positive number of seconds"))
}

impl Job {
    fn from_args(args: Args) -> Result<Job, String> {
        let cpu = seconds("--time-limit", args.time_limit)?;
        let wall = match args.wall_limit {
            Some(w) => seconds("--wall-limit", w)?,
            None => cpu * 2 + Duration::from_secs(1),
        };
        let memory = parse_size(&args.memory).map_err(|e| format!("--memory: {e}"))?;
        let output_limit =
            parse_size(&args.output_limit).map_err(|e| format!("--output-limit: {e}"))?;
        let output_limit = usize::try_from(output_limit)
            .ok()
            .filter(|&n| n <= 1 << 30)
            .ok_or("--output-limit: at most 1G")?;
        let source = match (args.lang, &args.file) {
            (Lang::Exe, None) => {
                return Err("--lang exe needs FILE, the path of the compiled program".into());
            }
            (Lang::Exe, Some(path)) => {
                let meta = std::fs::metadata(path).map_err(|e| format!("{path:?}: {e}"))?;
                if !meta.is_file() {
                    return Err(format!("{path:?} is not a regular file"));
                }
                Source::Program(path.clone())
            }
            (_, Some(path)) => Source::Text(read_bounded(
                File::open(path).map_err(|e| format!("{path:?}: {e}"))?,
                &path.display().to_string(),
            )?),
            (_, None) => Source::Text(read_bounded(io::stdin().lock(), "standard input")?),
        };
        let stdin = match (&args.stdin, &args.file) {
            (Some(path), _) => {
                StdinFrom::File(File::open(path).map_err(|e| format!("--stdin {path:?}: {e}"))?)
            }
            (None, Some(_)) => StdinFrom::Inherit,
            (None, None) => StdinFrom::Empty,
        };
        Ok(Job {
            lang: args.lang,
            cpu,
            wall,
            memory,
            output_limit,
            source,
            stdin,
        })
    }

    /// The strict policy of a run: the host system read-only, no network, small tmpfs `/tmp` and `/work`,
    /// the source read-only inside `/work`, default seccomp and landlock, and the limits.
    fn policy(&self, host_file: &Path) -> Policy {
        let mut policy = Policy::default()
            .hostname("coderun")
            .network(Network::None)
            .tmpfs_sized("/tmp", TMP_SIZE)
            .tmpfs_sized(WORK_DIR, WORK_SIZE)
            .ro_bind(host_file, self.inside_path())
            .timeout(self.wall)
            .cpu_time(self.cpu)
            .memory(self.memory)
            .pids(PIDS);
        policy.limits.nofile = Some(NOFILE);
        policy
    }

    fn inside_path(&self) -> String {
        format!("{WORK_DIR}/{}", self.lang.file_name())
    }
}

fn read_bounded(r: impl Read, what: &str) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    r.take(MAX_SOURCE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the source from {what}: {e}"))?;
    if buf.len() as u64 > MAX_SOURCE {
        return Err(format!(
            "the source in {what} is larger than {MAX_SOURCE} bytes"
        ));
    }
    Ok(buf)
}

/// Why no verdict could be produced.
enum Failure {
    /// Preparing the run on the host failed.
    Host(String),
    /// The sandbox could not be built or the program not started.
    Setup(sandkasten::SetupFailure),
    /// coderun got a stop signal; the sandbox was killed.
    Interrupted(i32),
}

impl Failure {
    fn message(&self) -> String {
        match self {
            Failure::Host(m) => m.clone(),
            Failure::Setup(f) => f.to_string(),
            Failure::Interrupted(s) => format!("interrupted by signal {s}; the sandbox was killed"),
        }
    }

    fn json(&self) -> Value {
        match self {
            Failure::Setup(f) => json!({
                "message": self.message(), "stage": f.stage, "errno": f.errno,
            }),
            _ => json!({ "message": self.message(), "stage": null, "errno": null }),
        }
    }

    fn exit_code(&self) -> u8 {
        match self {
            Failure::Interrupted(s) => (128 + s).clamp(0, 255) as u8,
            _ => SANDBOX_ERROR,
        }
    }
}

fn host(what: &str) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |e| Failure::Host(format!("{what}: {e}"))
}

/// A private directory under the temp dir holding the file bound into the sandbox; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> io::Result<Scratch> {
        let base = std::env::temp_dir();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for n in 0..100 {
            let dir = base.join(format!("coderun-{}-{stamp}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    // Readable by the sandbox user (a root caller's sandbox runs as an unprivileged uid).
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                    return Ok(Scratch(dir));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name for a temp dir",
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Puts the source (or a copy of the program) into the scratch dir, readable by the sandbox user.
fn stage_source(job: &Job, scratch: &Scratch) -> Result<PathBuf, Failure> {
    let path = scratch.0.join(job.lang.file_name());
    match &job.source {
        Source::Text(text) => {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
                .map_err(host("writing the source to the temp dir"))?;
            f.write_all(text)
                .map_err(host("writing the source to the temp dir"))?;
        }
        Source::Program(src) => {
            std::fs::copy(src, &path)
                .map_err(|e| Failure::Host(format!("copying {src:?} to the temp dir: {e}")))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(host("making the program's copy executable"))?;
        }
    }
    Ok(path)
}

fn run(job: Job) -> Result<Value, Failure> {
    let signals = SignalFd::block(&STOP_SIGNALS).map_err(host("blocking stop signals"))?;
    let scratch = Scratch::new().map_err(|e| {
        Failure::Host(format!(
            "creating a temp dir in {:?}: {e}",
            std::env::temp_dir()
        ))
    })?;
    let host_file = stage_source(&job, &scratch)?;
    let inside = job.inside_path();
    let mut cmd = match job.lang {
        Lang::Exe => Sandbox::new(&inside),
        lang => {
            let (program, args) = lang.command(&inside);
            let mut c = Sandbox::new(program);
            c.args(args);
            c
        }
    };
    cmd.policy(job.policy(&host_file))
        .current_dir(WORK_DIR)
        .env("HOME", WORK_DIR)
        .env("LANG", "C.UTF-8")
        .stdout(Stdio::Piped)
        .stderr(Stdio::Piped);
    match &job.stdin {
        StdinFrom::File(f) => {
            let fd = f
                .try_clone()
                .map_err(host("duplicating the --stdin file"))?;
            cmd.stdin(Stdio::from(fd));
        }
        StdinFrom::Inherit => {
            cmd.stdin(Stdio::Inherit);
        }
        StdinFrom::Empty => {
            cmd.stdin(Stdio::Null);
        }
    }
    // stdout over its limit kills the sandbox (OLE); stderr is cut and counted.
    cmd.output_limits(
        OutputLimit::kill_after(job.output_limit as u64),
        OutputLimit::truncate(STDERR_LIMIT),
    );
    // One thread drives the run (the blocking pool only starts it); the stop signals stay blocked in its
    // threads, which inherit this thread's mask.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(host("starting the tokio runtime"))?;
    let outcome = runtime.block_on(async {
        // SAFETY: the signalfd stays open, and keeps its number, until `signals` drops after this block.
        let stop =
            unsafe { AsyncFd::register_with_interest(signals.fd.as_raw_fd(), Interest::READABLE) }
                .map_err(|e| Failure::Host(format!("watching the stop signals: {e}")))?;
        let child = cmd
            .spawn_async()
            .await
            .map_err(|e| Failure::Host(e.to_string()))?;
        tokio::select! {
            outcome = child.wait_with_output() => {
                outcome.map_err(|e| Failure::Host(format!("waiting for the sandbox: {e}")))
            }
            // The run's future is dropped here, and with it the child: the whole tree is killed.
            signal = stopped(&stop, &signals) => Err(signal),
        }
    })?;
    if let Status::SetupFailed(f) = &outcome.status {
        return setup_failed(&job, f.clone());
    }
    Ok(report(&job, &outcome))
    // `scratch` is removed here, and on every early return above.
}

/// Until a stop signal comes: the failure that names it.
async fn stopped(stop: &AsyncFd<i32>, signals: &SignalFd) -> Failure {
    loop {
        let mut ready = match stop.readable().await {
            Ok(r) => r,
            Err(e) => return Failure::Host(format!("watching the stop signals: {e}")),
        };
        ready.clear_ready();
        match signals.read() {
            Ok(signal) => return Failure::Interrupted(signal),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Failure::Host(format!("reading a stop signal: {e}")),
        }
    }
}

/// A program that could not be started: the submission's fault for `exe` (RE), the sandbox's otherwise.
fn setup_failed(job: &Job, f: sandkasten::SetupFailure) -> Result<Value, Failure> {
    if job.lang == Lang::Exe && f.stage == Stage::Exec {
        return Ok(json!({
            "verdict": "RE",
            "lang": job.lang.name(),
            "exit_code": null,
            "signal": null,
            "error": { "message": f.message, "stage": f.stage, "errno": f.errno },
            "stdout": "",
            "stderr": "",
            "limits": limits_json(job),
        }));
    }
    Err(Failure::Setup(f))
}

fn limits_json(job: &Job) -> Value {
    json!({
        "cpu_secs": job.cpu.as_secs_f64(),
        "wall_secs": job.wall.as_secs_f64(),
        "memory_bytes": job.memory,
        "output_bytes": job.output_limit,
        "pids": PIDS,
    })
}

/// The verdict object.
fn report(job: &Job, o: &Outcome) -> Value {
    let cpu = o.usage.cpu_user + o.usage.cpu_sys;
    let (verdict, time_limit) = if o.capture.killed_for_output {
        ("OLE", None)
    } else {
        match &o.status {
            Status::TimedOut(TimeLimit::Wall) => ("TLE", Some("wall")),
            Status::TimedOut(TimeLimit::Cpu) => ("TLE", Some("cpu")),
            Status::OomKilled => ("MLE", None),
            // The whole tree's CPU time counts, not only each process's RLIMIT_CPU.
            _ if cpu > job.cpu => ("TLE", Some("cpu")),
            Status::Exited(0) => ("OK", None),
            _ => ("RE", None),
        }
    };
    let (exit_code, signal) = match o.status {
        Status::Exited(c) => (Some(c), None),
        Status::Signaled(s) => (None, Some(s)),
        _ => (None, None),
    };
    let memory_enforced = o
        .enforced
        .cgroup
        .as_ref()
        .is_some_and(|c| c.memory.is_some());
    let pids_enforced = o.enforced.cgroup.as_ref().is_some_and(|c| c.pids.is_some());
    let memory_reason = (!memory_enforced).then(|| {
        o.enforced
            .not_enforced
            .iter()
            .find(|r| r.contains("memory"))
            .cloned()
            .unwrap_or_else(|| "no cgroup with a memory limit was created for the run".into())
    });
    json!({
        "verdict": verdict,
        "time_limit": time_limit,
        "lang": job.lang.name(),
        "exit_code": exit_code,
        "signal": signal,
        "stdout": String::from_utf8_lossy(&o.stdout),
        "stdout_bytes": o.capture.stdout_bytes,
        "stdout_truncated": o.capture.stdout_truncated,
        "stderr": String::from_utf8_lossy(&o.stderr),
        "stderr_bytes": o.capture.stderr_bytes,
        "stderr_truncated": o.capture.stderr_truncated,
        "wall_ms": o.usage.wall.as_millis() as u64,
        "cpu_ms": cpu.as_millis() as u64,
        "peak_memory_bytes": o.usage.peak_memory_bytes,
        "usage_source": o.usage.source,
        "memory_limit_enforced": memory_enforced,
        "memory_limit_not_enforced_reason": memory_reason,
        "pids_limit_enforced": pids_enforced,
        "not_enforced": o.enforced.not_enforced,
        "denied_syscalls": o.denied_syscalls,
        "limits": limits_json(job),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("10KB"), Ok(10 << 10));
        for bad in ["0", "M", "12Q", "-1K", "1.5M", "99999999999T", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

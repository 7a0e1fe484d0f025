//! `sandbox`: run a program in a sandbox; keep sessions that outlive the command that made them (`create`,
//! `start`, `exec`, `stop`, `rm`, `ps`, `logs`: [`session`]); manage images ([`image`]); or report what this
//! host can enforce.
//!
//! Exit code of `sandbox run` and `sandbox exec`: the program's own; 128+N when it died of signal N; 124 on
//! timeout; 125 when the sandbox failed; 126 when the program is not executable; 127 when it was not found.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sandkasten::seccomp::SeccompProfile;
use sandkasten::{Backend, Network, Policy, Publish, Rootfs, Sandbox, SnapshotCache, VmEngine};

mod args;
mod doctor;
mod image;
mod session;
mod vm_assets;

use args::{
    apply_ulimit, parse_bind, parse_cap, parse_env, parse_ids, parse_size, parse_tmpfs, parse_user,
};
use doctor::doctor;

/// Exit code for every failure of the sandbox itself.
const SANDBOX_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "sandbox",
    version,
    about = "Run untrusted programs in a sandbox",
    after_help = "Examples:
  sandbox run python3 -c 'print(1)'                   the host's system read-only, no network
  sandbox run --memory 512MiB --timeout 10 --bind $PWD:/work --cwd /work make test
  sandbox run --net user --publish 8080:80 --image nginx:1.25
  sandbox run --backend vm -- uname -r                the same in a microVM
  sandbox create --name box && sandbox exec box sh -c 'echo hi > /tmp/f' && sandbox stop box
  sandbox doctor                                      what this host can enforce"
)]
struct Cli {
    /// Show the library's log on stderr: -v what it decides (info), -vv more (debug), -vvv everything.
    /// Without: its warnings only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

// Each subcommand's arguments are built only when it is the one invoked (or for help, completions and
// man pages): building every subcommand's arguments was ~0.2 ms of each `sandbox run`.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Run PROGRAM in a sandbox.
    #[command(after_help = "Examples:
  sandbox run ls /                                    the program needs no `--`
  sandbox run --report verdict.json --timeout 5 -- ./a.out < input.txt
  sandbox run --ro-bind /srv/data:/data:ro --tmpfs /scratch --env HOME=/scratch python3 job.py
  sandbox run --policy judge.toml --user 1000:1000 ./solution
Exit code: the program's; 128+N for signal N; 124 timeout; 125 the sandbox failed; 126 not executable;
127 not found.")]
    Run(Box<RunArgs>),
    #[command(flatten)]
    Session(session::SessionCommand),
    /// Manage container images: import, ls, inspect, rm, prune.
    Image(image::ImageArgs),
    /// Print what this host can enforce.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Where the VM backend finds its guest kernel, agent and QEMU; `--build` builds what is missing.
    #[command(
        after_help = "Exit code: 0 when the kernel and the agent are found, 1 otherwise.
A registry install builds from the crate's own source: the kernel into the kernel build cache (about
12 minutes), the static agent into ~/.cache/sandbox/agent/, where runs find them without variables."
    )]
    VmAssets {
        /// Build what is missing (needs cargo, gcc, make, flex, bison, bc, libelf; see README.md).
        #[arg(long)]
        build: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `sandbox completions bash > /etc/bash_completion.d/sandbox`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `sandbox man > sandbox.1 && man ./sandbox.1`).
    Man,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    Auto,
    Namespace,
    Vm,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum EngineArg {
    Auto,
    Qemu,
    Builtin,
}

#[derive(Clone, Copy, ValueEnum)]
enum NetArg {
    /// A network namespace of its own with only loopback (the default).
    None,
    /// The host's network.
    Host,
    /// A network namespace of its own connected through pasta (Debian package passt): outbound TCP, UDP and
    /// DNS; never the host's loopback services; --publish binds host ports. Namespace backend, and a VM of
    /// its own (passt), on either engine.
    User,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Which backend runs the program.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Which engine runs the VM backend.
    #[arg(long = "vm-engine", value_enum, default_value = "auto")]
    vm_engine: EngineArg,
    /// Where snapshots of the booted guest are kept (either engine), so that a run restores one instead of
    /// booting (`user`: ~/.cache/sandbox/snapshots; `off`: always boot; else a directory).
    #[arg(
        long = "vm-snapshots",
        value_name = "user|off|DIR",
        default_value = "user"
    )]
    vm_snapshots: String,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Write the verdict as JSON to FILE once the program ended (`-`: one line on stdout, after the
    /// program's own output). Its keys: docs/verdict.md.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the verdict as one line of JSON to descriptor FD, open in this process (as bwrap's
    /// --json-status-fd); the sandbox never sees it.
    #[arg(long, value_name = "FD", conflicts_with = "report", value_parser = clap::value_parser!(i32).range(3..))]
    report_fd: Option<i32>,
    /// The program and its arguments (with --image: optional, replacing the image's Cmd).
    #[arg(
        required_unless_present = "image",
        trailing_var_arg = true,
        value_name = "PROGRAM"
    )]
    program: Vec<std::ffi::OsString>,
}

// The flags that make a policy (and the program's environment and working directory): `sandbox run`'s and
// `sandbox create`'s. (Not a doc comment: clap would take it for the about text of the subcommands that
// flatten it, whose arguments are deferred.)
#[derive(clap::Args)]
struct PolicyArgs {
    /// Run on an image of the store as the root (`sandbox image ls`): its files, its Env, Entrypoint and Cmd
    /// (PROGRAM and its arguments replace Cmd), WorkingDir and User. Namespace backend only for now.
    #[arg(long, value_name = "NAME[:TAG]", conflicts_with = "rootfs")]
    image: Option<String>,
    /// Run on the host directory DIR as the root (as `bwrap --bind DIR /`), read-only underneath with a
    /// writable layer on top. Namespace backend only for now.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// With --image or --rootfs: keep the writable layer in DIR (it holds upper/ and work/) instead of a tmpfs
    /// discarded at the end.
    #[arg(long = "rootfs-upper", value_name = "DIR")]
    rootfs_upper: Option<PathBuf>,
    /// With --image or --rootfs: no writable layer; the root read-only, with empty tmpfs at /tmp, /run and
    /// /var/tmp (a directory or a one-layer image).
    #[arg(long = "read-only")]
    read_only: bool,
    /// With --image: the image store (default: /var/lib/sandbox/images for root, else
    /// ~/.local/share/sandbox/images).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Show host path SRC read-only at DST (default: SRC). Repeatable. A trailing `:ro` is accepted; `:rw` is
    /// refused (use --bind).
    #[arg(long = "ro-bind", value_name = "SRC[:DST[:ro]]")]
    ro_bind: Vec<String>,
    /// Show host path SRC at DST (default: SRC), read-write, or read-only with a trailing `:ro` (docker `-v`
    /// syntax: `--bind /srv:/data:ro`). Repeatable.
    #[arg(long = "bind", value_name = "SRC[:DST[:ro|rw]]")]
    bind: Vec<String>,
    /// Mount an empty tmpfs at DST, of at most SIZE bytes (default: the memory limit, else 64M). Repeatable.
    #[arg(long, value_name = "DST[:size=SIZE]")]
    tmpfs: Vec<String>,
    /// Set a resource limit of each process, docker's syntax: nofile=N, nproc=N, fsize=SIZE, cpu=SECONDS
    /// (`N:N` accepted: soft and hard are the same). Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    ulimit: Vec<String>,
    /// Show the host's character device PATH (below /dev) in the sandbox's /dev, e.g. /dev/kvm. Repeatable.
    /// `--dev-bind PATH` is the same (bwrap's name; one path: the device keeps its place).
    #[arg(long, visible_alias = "dev-bind", value_name = "PATH")]
    device: Vec<PathBuf>,
    /// Give the program the supplementary group GID inside (needs a range of ids). Repeatable.
    #[arg(long = "group-add", value_name = "GID")]
    group_add: Vec<u32>,
    /// Set an environment variable (the environment starts empty but for PATH), or with KEY alone pass this
    /// process's own value in. Repeatable.
    #[arg(long, value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read variables from FILE: one KEY=VALUE (or KEY) per line; `#` comments. Before --env. Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Hostname inside the sandbox.
    #[arg(long)]
    hostname: Option<String>,
    /// User id the program runs as inside (default 0, the sandbox's root: never host root).
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// Group id the program runs as inside (default 0).
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
    /// User and group inside, docker style: `--user 1000` or `--user 1000:1000` (numbers; a user alone keeps
    /// the group). With --image or --rootfs, names too, resolved in the root's own /etc/passwd and
    /// /etc/group (a uid alone then takes its passwd group).
    #[arg(long, value_name = "UID[:GID]", conflicts_with_all = ["uid", "gid"])]
    user: Option<String>,
    /// Keep a capability for a program that runs as uid 0 inside (in the sandbox's user namespace only): chown,
    /// dac_override, fowner, fsetid, kill, setgid, setuid, net_bind_service, sys_chroot, or `all` of these.
    /// Repeatable. None by default.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Which host ids the sandbox maps: `auto` (65536 where the caller can have them: root callers a block of
    /// their own from the range reserved in /etc/subuid and /etc/subgid, others their subordinate ranges
    /// through newuidmap), `single` (one id), `subordinate:USER`, or `range:UID:GID:COUNT` (root).
    #[arg(long, value_name = "auto|single|subordinate:USER|range:UID:GID:COUNT")]
    ids: Option<String>,
    /// Network access.
    #[arg(long, value_enum)]
    net: Option<NetArg>,
    /// With --net user: bind HOSTPORT on every address of the host and forward it to PORT inside the
    /// sandbox (TCP unless /udp; docker's -p without an address). Repeatable.
    #[arg(long, value_name = "HOSTPORT:PORT[/tcp|/udp]")]
    publish: Vec<String>,
    /// Wall-clock limit in seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Memory limit of the whole tree, swap included (e.g. 512M, 2G; K/M/G are powers of 1024).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Most processes and threads the tree may have.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU bandwidth in cores (e.g. 0.5).
    #[arg(long, value_name = "FLOAT")]
    cpus: Option<f64>,
    /// CPU time limit of each process, in seconds.
    #[arg(long = "cpu-time", value_name = "SECONDS")]
    cpu_time: Option<f64>,
    /// Fail instead of running when a cgroup limit cannot be enforced.
    #[arg(long = "require-limits")]
    require_limits: bool,
    /// seccomp profile: default, none, or a TOML profile file.
    #[arg(long, value_name = "default|none|FILE")]
    seccomp: Option<String>,
    /// Start from this TOML policy; the flags above add to it.
    #[arg(long = "policy", value_name = "FILE")]
    policy_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { SANDBOX_ERROR } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let level = match cli.verbose {
        0 => tracing_subscriber::filter::LevelFilter::WARN,
        1 => tracing_subscriber::filter::LevelFilter::INFO,
        2 => tracing_subscriber::filter::LevelFilter::DEBUG,
        _ => tracing_subscriber::filter::LevelFilter::TRACE,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(cli.verbose > 1)
        .init();
    match cli.command {
        Command::Run(args) => match run(*args) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("sandbox: {msg}");
                ExitCode::from(SANDBOX_ERROR)
            }
        },
        Command::Session(command) => match session::main(command) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("sandbox: {msg}");
                ExitCode::from(SANDBOX_ERROR)
            }
        },
        Command::Image(args) => match image::main(args) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("sandbox: {msg}");
                ExitCode::from(SANDBOX_ERROR)
            }
        },
        Command::Doctor { json } => doctor(json),
        Command::VmAssets { build, json } => match vm_assets::vm_assets(build, json) {
            Ok(code) => code,
            Err(msg) => {
                eprintln!("sandbox: {msg}");
                ExitCode::from(SANDBOX_ERROR)
            }
        },
        Command::Completions { shell } => {
            let mut cmd = full_command();
            clap_complete::generate(shell, &mut cmd, "sandbox", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let cmd = full_command();
            match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sandbox: writing the manual page: {e}");
                    ExitCode::from(SANDBOX_ERROR)
                }
            }
        }
    }
}

/// The whole command line, for completions and the manual: `image`'s subcommands made before the top level
/// is built, so that its `help` subcommand lists them too (clap makes that tree before it expands what was
/// deferred).
fn full_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command().mut_subcommand("image", |image| {
        <image::ImageArgs as clap::Args>::augment_args(image.defer(|c| c))
    })
}

fn build_policy(args: &PolicyArgs) -> Result<Policy, String> {
    let mut policy = match &args.policy_file {
        Some(file) => Policy::from_toml_file(file).map_err(|e| e.to_string())?,
        None => Policy::default(),
    };
    for spec in &args.ro_bind {
        policy.mounts.push(parse_bind("--ro-bind", spec)?);
    }
    for spec in &args.bind {
        policy.mounts.push(parse_bind("--bind", spec)?);
    }
    for spec in &args.tmpfs {
        policy.mounts.push(parse_tmpfs(spec)?);
    }
    for spec in &args.ulimit {
        apply_ulimit(spec, &mut policy.limits)?;
    }
    policy.devices.extend(args.device.iter().cloned());
    policy.groups.extend(&args.group_add);
    if let Some(h) = &args.hostname {
        policy.hostname = h.clone();
    }
    if let Some(u) = args.uid {
        policy.uid = u;
    }
    if let Some(g) = args.gid {
        policy.gid = g;
    }
    if args.image.is_some() || args.rootfs.is_some() {
        let mut root = match (&args.image, &args.rootfs) {
            (Some(name), _) => Rootfs::image(name.clone()),
            (None, Some(dir)) => Rootfs::dir(absolute(dir, "--rootfs")?),
            (None, None) => unreachable!("checked above"),
        };
        if let Some(store) = &args.store {
            root = root.store(absolute(store, "--store")?);
        }
        if let Some(upper) = &args.rootfs_upper {
            root = root.upper(absolute(upper, "--rootfs-upper")?);
        }
        root.user = args.user.clone();
        root.read_only = args.read_only;
        policy.rootfs = Some(root);
    } else if args.rootfs_upper.is_some() || args.store.is_some() || args.read_only {
        return Err("--rootfs-upper, --read-only and --store go with --image or --rootfs".into());
    } else if let Some(spec) = &args.user {
        (policy.uid, policy.gid) = parse_user(spec, policy.gid)?;
    }
    if let Some(spec) = &args.ids {
        policy.ids = parse_ids(spec)?;
    }
    for name in &args.cap_add {
        for c in parse_cap(name)? {
            if !policy.capabilities.contains(&c) {
                policy.capabilities.push(c);
            }
        }
    }
    match args.net {
        Some(NetArg::None) => policy.network = Network::None,
        Some(NetArg::Host) => policy.network = Network::Host,
        Some(NetArg::User) => policy.network = Network::User,
        None => {}
    }
    for spec in &args.publish {
        policy
            .publish
            .push(spec.parse::<Publish>().map_err(|e| e.to_string())?);
    }
    if let Some(t) = args.timeout {
        let t = Duration::try_from_secs_f64(t)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--timeout {t}: give a positive number of seconds"))?;
        policy.timeout = Some(t);
    }
    if let Some(m) = &args.memory {
        policy.limits.memory = Some(parse_size(m)?);
    }
    if let Some(p) = args.pids {
        policy.limits.pids = Some(p);
    }
    if let Some(c) = args.cpus {
        policy.limits.cpus = Some(c);
    }
    if let Some(t) = args.cpu_time {
        let t = Duration::try_from_secs_f64(t)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--cpu-time {t}: give a positive number of seconds"))?;
        policy.limits.cpu_time = Some(t);
    }
    if args.require_limits {
        policy.limits.required = true;
    }
    match args.seccomp.as_deref() {
        None => {}
        Some("default") => policy.seccomp = SeccompProfile::Default,
        Some("none") => policy.seccomp = SeccompProfile::None,
        Some(file) => {
            policy.seccomp = SeccompProfile::Custom(
                sandkasten::seccomp::load_file(file).map_err(|e| e.to_string())?,
            )
        }
    }
    policy.validate().map_err(|e| e.to_string())?;
    Ok(policy)
}

/// `path` made absolute against the current directory.
fn absolute(path: &std::path::Path, flag: &str) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{flag} {path:?}: {e}"))
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    use std::io::Write;
    let policy = build_policy(&args.policy)?;
    // Checked before the run: a verdict that cannot be delivered is known before the program runs.
    let report_fd = args.report_fd.map(args::report_fd).transpose()?;
    // With --image and no program: the image's own command (an empty program).
    let (program, rest) = match args.program.split_first() {
        Some((p, rest)) => (p.clone(), rest),
        None => (std::ffi::OsString::new(), &[][..]),
    };
    let mut cmd = Sandbox::new(program);
    cmd.args(rest).policy(policy).backend(match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Namespace => Backend::Namespace,
        BackendArg::Vm => Backend::Vm,
    });
    cmd.vm_engine(match args.vm_engine {
        EngineArg::Auto => VmEngine::Auto,
        EngineArg::Qemu => VmEngine::Qemu,
        EngineArg::Builtin => VmEngine::Builtin,
    });
    cmd.vm_snapshots(match args.vm_snapshots.as_str() {
        "user" => SnapshotCache::User,
        "off" => SnapshotCache::Off,
        dir => SnapshotCache::Dir(dir.into()),
    });
    for (k, v) in parse_env(&args.policy.env_file, &args.policy.env)? {
        cmd.env(k, v);
    }
    if let Some(d) = &args.policy.cwd {
        cmd.current_dir(d);
    }
    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let progress = child.boot_watch().and_then(boot_progress);
            let outcome = child.wait();
            if let Some((done, t)) = progress {
                done.store(true, std::sync::atomic::Ordering::Release);
                let _ = t.join();
            }
            outcome.map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Some(path) = &args.report {
        let report = outcome.report_json();
        if path.as_os_str() == "-" {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{report}")
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the report to stdout: {e}"))?;
        } else {
            let text = serde_json::to_string_pretty(&report).expect("JSON value serialises");
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("cannot write the report to {path:?}: {e}"))?;
        }
    }
    if let Some(mut f) = report_fd {
        writeln!(f, "{}", outcome.report_json()).map_err(|e| {
            format!(
                "cannot write the report to descriptor {:?}: {e}",
                args.report_fd
            )
        })?;
    }
    // What was asked and not enforced, and an end that is the sandbox's doing, each one line on stderr.
    for reason in &outcome.enforced.not_enforced {
        eprintln!("sandbox: warning: not enforced: {reason}");
    }
    match &outcome.status {
        sandkasten::Status::SetupFailed(f) => eprintln!("sandbox: {f}"),
        sandkasten::Status::TimedOut(limit) => eprintln!("sandbox: {}", timed_out(*limit)),
        sandkasten::Status::OomKilled => eprintln!(
            "sandbox: the program was killed: its memory limit was reached (out of memory)"
        ),
        _ => {}
    }
    Ok(ExitCode::from(
        outcome.status.exit_code().clamp(0, 255) as u8
    ))
}

/// The line for a run that ran out of `limit`.
pub(crate) fn timed_out(limit: sandkasten::outcome::TimeLimit) -> &'static str {
    match limit {
        sandkasten::outcome::TimeLimit::Cpu => {
            "the program was killed: it used up its CPU time limit (--cpu-time)"
        }
        _ => "the program was killed: it ran out of its wall-clock time limit (--timeout)",
    }
}

/// On a terminal (and outside CI), a line on stderr while a cold VM boots for longer than a second: a first
/// boot, or any boot on software KVM, takes long enough to look like a hang. Cleared once the guest is up.
fn boot_progress(
    watch: sandkasten::BootWatch,
) -> Option<(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
)> {
    use std::io::{IsTerminal, Write};
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci || !std::io::stderr().is_terminal() {
        return None;
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let t = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut shown = false;
        while !stop.load(std::sync::atomic::Ordering::Acquire) && !watch.booted() {
            let secs = start.elapsed().as_secs();
            if secs >= 1 {
                eprint!("\rsandbox: booting the VM ({secs} s)");
                let _ = std::io::stderr().flush();
                shown = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        if shown {
            // Erase the line before the program's own output continues.
            eprint!("\r\x1b[2K");
        }
    });
    Some((done, t))
}

//! `sandbox-runtime`: an OCI runtime with runc's command line, so podman, containerd and Kubernetes can run
//! containers in sandkasten's sandboxes.
//!
//! Exit codes as runc's: 0, or 1 with one error line (on stderr, and in `--log` as JSON with
//! `--log-format json`); `exec` without `--detach` exits with the process's own code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use sandbox_runtime::container::{self, Runtime};
use sandbox_runtime::log::Log;

#[derive(Parser)]
#[command(
    name = "sandbox-runtime",
    version,
    about = "An OCI runtime (runc's command line) running containers in sandkasten sandboxes"
)]
struct Cli {
    /// Where containers' state is kept (default: /run/sandbox-runtime for root, else
    /// $XDG_RUNTIME_DIR/sandbox-runtime).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where errors and notes are written (besides stderr).
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The format of `--log`.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Accepted for runc compatibility: the sandbox makes its cgroup beneath the caller's own.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility: more detail in the log.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility (the sandbox is rootless-capable either way).
    #[arg(long, global = true, value_name = "true|false|auto")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container from a bundle: its process waits for `start`.
    Create {
        /// The bundle directory (config.json and the root filesystem).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's pid (its init's, on the host) here.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// A unix socket that receives the pseudo-terminal's master with `process.terminal`.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Accepted for runc compatibility.
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted for runc compatibility.
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        /// Descriptors beyond 0-2 to pass in: not supported (must be 0).
        #[arg(long = "preserve-fds", default_value = "0")]
        preserve_fds: u32,
        /// The container's id.
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's process (default SIGTERM).
    Kill {
        /// To every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// A name (TERM, SIGTERM) or number.
        signal: Option<String>,
    },
    /// Delete a container (a running one only with --force).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec(Box<ExecArgs>),
    /// List a container's processes.
    Ps {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Options for ps (accepted, not used).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print what this runtime supports (features.json).
    Features,
}

#[derive(clap::Args)]
struct ExecArgs {
    /// The process as JSON (the runtime-spec's `process`).
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Return once the process started; its pid goes to --pid-file.
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// A pseudo-terminal (with --console-socket).
    #[arg(short, long)]
    tty: bool,
    /// Working directory inside.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID]: must be the container's own.
    #[arg(short, long)]
    user: Option<String>,
    /// Accepted for runc compatibility (no capability beyond the container's is ever added).
    #[arg(long)]
    cap: Vec<String>,
    /// Accepted for runc compatibility (always set).
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    apparmor: Option<String>,
    /// Descriptors beyond 0-2 to pass in: not supported (must be 0).
    #[arg(long = "preserve-fds", default_value = "0")]
    preserve_fds: u32,
    /// The container's id.
    id: String,
    /// The command, when there is no --process.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let log = Log::new(cli.log.clone(), matches!(cli.log_format, LogFormat::Json));
    let _ = (cli.systemd_cgroup, cli.debug, &cli.rootless);
    let rt = match Runtime::new(cli.root.clone()) {
        Ok(rt) => rt,
        Err(e) => return log.fail(&e),
    };
    let result = match cli.command {
        Command::Create {
            bundle,
            pid_file,
            console_socket,
            preserve_fds,
            id,
            ..
        } => rt.create(
            &id,
            &container::CreateOptions {
                bundle,
                pid_file,
                console_socket,
                preserve_fds,
            },
            &log,
        ),
        Command::Start { id } => rt.start(&id, &log),
        Command::State { id } => rt.state(&id).map(|s| {
            println!(
                "{}",
                serde_json::to_string_pretty(&s).expect("a state serializes")
            );
        }),
        Command::Kill { all, id, signal } => rt.kill(&id, signal.as_deref().unwrap_or("TERM"), all),
        Command::Delete { force, id } => rt.delete(&id, force, &log),
        Command::Exec(a) => {
            let a = *a;
            let opts = container::ExecOptions {
                process: a.process,
                detach: a.detach,
                pid_file: a.pid_file,
                console_socket: a.console_socket,
                tty: a.tty,
                cwd: a.cwd,
                env: a.env,
                user: a.user,
                preserve_fds: a.preserve_fds,
                command: a.command,
            };
            match rt.exec(&a.id, &opts) {
                Ok(code) => return ExitCode::from(code),
                Err(e) => Err(e),
            }
        }
        Command::Ps { format, id, .. } => rt.ps(&id, &format),
        Command::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&sandbox_runtime::features::features())
                    .expect("features serialize")
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => log.fail(&e),
    }
}

//! `sandbox-test-runner`: a cargo target runner that runs every test binary (and `cargo run` program) in a
//! sandbox.
//!
//! ```text
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=/path/to/sandbox-test-runner cargo test
//! sandbox-test-runner [--policy FILE] [--] BINARY [ARGS...]
//! ```
//!
//! Cargo calls it with the binary's path and the test's arguments, from the package's directory. The
//! sandbox starts from the policy of `--policy FILE` (or of the file named by `SANDBOX_TEST_RUNNER_POLICY`),
//! else the default policy (the host system read-only, a tmpfs `/tmp`, no network, default seccomp and
//! landlock), and adds:
//!
//! - the project read-only at its own path: the workspace root found from `CARGO_MANIFEST_DIR` (or the
//!   working directory), i.e. the highest directory above it whose `Cargo.toml` has a `[workspace]` table,
//!   else the nearest directory with a `Cargo.toml`, else the working directory itself;
//! - the target directory (the directory above the binary that holds cargo's `CACHEDIR.TAG`) read-only at
//!   its own path when it lies outside the project, and its `tmp/` (cargo's `CARGO_TARGET_TMPDIR`, created
//!   when missing) read-write: the only host directory a test can write to;
//! - the binary itself, read-only, when it lies in neither;
//! - `HOME=/tmp` (the real home is not visible), `TMPDIR` unset, and of the caller's environment only
//!   `RUST_*`, `CARGO_*`, `TERM`, `NO_COLOR`, `LANG` and `LC_ALL` (`PATH` is the sandbox's default);
//! - the same working directory, which must be inside the project or the target directory.
//!
//! The exit code is the test's own, 128+N when it died of signal N, 124 when the policy's timeout ran out,
//! 137 when it was OOM-killed, 125 when the sandbox could not be built (126/127: the binary could not be
//! executed / was not found), 2 for bad usage. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the runner (a
//! Ctrl-C in the terminal) are forwarded to the test, which runs in a session of its own.
//!
//! A root caller's sandbox runs as an unprivileged host id of a block of its own, so a test can write to
//! `target/tmp` only when others may (for example after `chmod 1777 target/tmp`). The default seccomp profile forbids
//! creating namespaces, so tests that build sandboxes themselves need a policy with `seccomp = "none"`
//! (and even then nested sandboxes may fail: this sandbox's masked `/proc` cannot be mounted again).

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use sandbox_examples::host::{SignalFd, poll, pollin};
use sandkasten::policy::SYSTEM_TOP;
use sandkasten::{Mount, Policy, Sandbox, Status};

/// Exit code for bad usage.
const USAGE_ERROR: u8 = 2;
/// Exit code when the sandbox failed.
const SANDBOX_ERROR: u8 = 125;
/// The environment variable naming a policy file, when `--policy` is not given.
const POLICY_ENV: &str = "SANDBOX_TEST_RUNNER_POLICY";
/// Environment variables passed through by prefix.
const ENV_PREFIXES: &[&str] = &["RUST_", "CARGO_"];
/// Environment variables passed through by name.
const ENV_NAMES: &[&str] = &["TERM", "NO_COLOR", "LANG", "LC_ALL"];
/// Signals forwarded to the test.
const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

const USAGE: &str = "usage: sandbox-test-runner [--policy FILE] [--] BINARY [ARGS...]\n\
    Runs BINARY in a sandbox: the project read-only, target/tmp read-write, no network, no home.\n\
    Use it as cargo's target runner: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=sandbox-test-runner.\n\
    The policy file can also be named by SANDBOX_TEST_RUNNER_POLICY.";

/// The parsed command line.
struct Args {
    policy: Option<PathBuf>,
    binary: PathBuf,
    rest: Vec<OsString>,
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Option<Args>, String> {
    let mut policy = None;
    let binary = loop {
        let Some(arg) = args.next() else {
            return Err("no BINARY given".into());
        };
        match arg.to_str() {
            Some("--policy") => {
                let file = args.next().ok_or("--policy needs a FILE")?;
                policy = Some(PathBuf::from(file));
            }
            Some("-h" | "--help") => return Ok(None),
            Some("--") => break args.next().ok_or("no BINARY given after --")?,
            Some(s) if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => break arg,
        }
    };
    Ok(Some(Args {
        policy,
        binary: binary.into(),
        rest: args.collect(),
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("sandbox-test-runner: {msg}\n{USAGE}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("sandbox-test-runner: {msg}");
            ExitCode::from(SANDBOX_ERROR)
        }
    }
}

/// Where things are on the host.
#[derive(Debug, PartialEq)]
struct Layout {
    /// The project (workspace root): read-only.
    project: PathBuf,
    /// Cargo's target directory, when the binary is in one.
    target: Option<PathBuf>,
}

/// The workspace root above `start`: the highest directory whose `Cargo.toml` has a `[workspace]` table,
/// else the nearest one with a `Cargo.toml`, else `start`.
fn project_root(start: &Path) -> PathBuf {
    let mut nearest = None;
    let mut workspace = None;
    for dir in start.ancestors() {
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        nearest.get_or_insert(dir);
        if text.lines().any(|l| l.trim() == "[workspace]") {
            workspace = Some(dir);
        }
    }
    workspace.or(nearest).unwrap_or(start).to_path_buf()
}

/// Cargo's target directory above `binary`: the directory holding `CACHEDIR.TAG`.
fn target_dir(binary: &Path) -> Option<PathBuf> {
    binary
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

fn layout(binary: &Path, cwd: &Path, manifest_dir: Option<&Path>) -> Layout {
    Layout {
        project: project_root(manifest_dir.unwrap_or(cwd)),
        target: target_dir(binary),
    }
}

/// True when `path` is shown by the read-only system view.
fn in_system_view(path: &Path) -> bool {
    SYSTEM_TOP
        .iter()
        .any(|top| path.starts_with(Path::new("/").join(top)))
}

/// The policy's mounts for `layout`, in order (outer before inner).
fn mounts(layout: &Layout, binary: &Path) -> Vec<Mount> {
    let ro = |p: &Path| Mount::RoBind {
        src: p.into(),
        dst: p.into(),
    };
    let mut m = vec![ro(&layout.project)];
    if let Some(target) = &layout.target {
        if !target.starts_with(&layout.project) {
            m.push(ro(target));
        }
        let tmp = target.join("tmp");
        m.push(Mount::Bind {
            src: tmp.clone(),
            dst: tmp,
        });
    }
    let visible = binary.starts_with(&layout.project)
        || layout
            .target
            .as_ref()
            .is_some_and(|t| binary.starts_with(t))
        || in_system_view(binary);
    if !visible {
        m.push(ro(binary));
    }
    m
}

/// The caller's variables that reach the test.
fn passed_env(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.filter(|(k, _)| {
        k.to_str().is_some_and(|k| {
            ENV_NAMES.contains(&k) || ENV_PREFIXES.iter().any(|p| k.starts_with(p))
        })
    })
    .collect()
}

fn run(args: Args) -> Result<ExitCode, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("the working directory: {e}"))?;
    let binary = std::fs::canonicalize(cwd.join(&args.binary))
        .map_err(|e| format!("{:?}: {e}", args.binary))?;
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|d| std::fs::canonicalize(d).ok());
    let layout = layout(&binary, &cwd, manifest_dir.as_deref());
    if layout.project == Path::new("/") {
        return Err("the project directory resolved to `/`; run from inside a project".into());
    }
    let cwd_visible = cwd.starts_with(&layout.project)
        || layout.target.as_ref().is_some_and(|t| cwd.starts_with(t));
    if !cwd_visible {
        return Err(format!(
            "the working directory {cwd:?} is outside the project {:?}; run from inside it",
            layout.project
        ));
    }
    if let Some(target) = &layout.target {
        let tmp = target.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {tmp:?}: {e}"))?;
    }

    let policy_file = args
        .policy
        .clone()
        .or_else(|| std::env::var_os(POLICY_ENV).map(PathBuf::from));
    let mut policy = match &policy_file {
        Some(f) => Policy::from_toml_file(f).map_err(|e| e.to_string())?,
        None => Policy::default(),
    };
    policy.mounts.extend(mounts(&layout, &binary));

    let mut cmd = Sandbox::new(&binary);
    cmd.args(&args.rest).policy(policy).current_dir(&cwd);
    for (k, v) in passed_env(std::env::vars_os()) {
        cmd.env(k, v);
    }
    cmd.env("HOME", "/tmp");

    let signals = SignalFd::block(&FORWARDED).map_err(|e| format!("blocking signals: {e}"))?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Err(e.to_string()),
    };
    let outcome = loop {
        let mut fds = [pollin(signals.fd.as_fd()), pollin(child.as_fd())];
        // The timeout only lets `try_wait` enforce the policy's wall limit as a backstop.
        poll(&mut fds, Some(Duration::from_secs(1))).map_err(|e| format!("poll: {e}"))?;
        if fds[0].revents != 0 {
            let sig = signals
                .read()
                .map_err(|e| format!("reading a signal: {e}"))?;
            child
                .signal(sig)
                .map_err(|e| format!("forwarding signal {sig}: {e}"))?;
        }
        if let Some(o) = child.try_wait().map_err(|e| e.to_string())? {
            break o;
        }
    };
    for reason in &outcome.enforced.not_enforced {
        eprintln!("sandbox-test-runner: not enforced: {reason}");
    }
    Ok(match outcome.status {
        Status::Exited(c) => ExitCode::from(c.clamp(0, 255) as u8),
        ref other => failed(&binary, other),
    })
}

/// Says why the test did not exit by itself and returns the shell-style code.
fn failed(binary: &Path, status: &Status) -> ExitCode {
    let name = binary.file_name().unwrap_or(OsStr::new("the test"));
    match status {
        Status::Signaled(s) => eprintln!("sandbox-test-runner: {name:?} died of signal {s}"),
        Status::TimedOut(l) => {
            eprintln!("sandbox-test-runner: {name:?} ran out of the policy's {l:?} time limit")
        }
        Status::OomKilled => eprintln!("sandbox-test-runner: {name:?} was OOM-killed"),
        Status::SetupFailed(f) => eprintln!("sandbox-test-runner: {f}"),
        Status::Exited(_) => {}
        other => eprintln!("sandbox-test-runner: {name:?} ended: {other:?}"),
    }
    ExitCode::from(status.exit_code().clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let a = parse_args(os(&["/t/bin", "--exact", "x"]).into_iter())
            .unwrap()
            .unwrap();
        assert_eq!(a.binary, Path::new("/t/bin"));
        assert_eq!(a.rest, os(&["--exact", "x"]));
        assert!(a.policy.is_none());
        let a = parse_args(os(&["--policy", "p.toml", "--", "--odd", "--x"]).into_iter())
            .unwrap()
            .unwrap();
        assert_eq!(a.policy.as_deref(), Some(Path::new("p.toml")));
        assert_eq!(a.binary, Path::new("--odd"));
        assert_eq!(a.rest, os(&["--x"]));
        assert!(parse_args(os(&["--help"]).into_iter()).unwrap().is_none());
        assert!(parse_args(os(&[]).into_iter()).is_err());
        assert!(parse_args(os(&["--policy"]).into_iter()).is_err());
        assert!(parse_args(os(&["--bogus", "bin"]).into_iter()).is_err());
    }

    #[test]
    fn environment_is_filtered() {
        let vars = [
            ("RUST_BACKTRACE", "1"),
            ("CARGO_PKG_NAME", "x"),
            ("TERM", "xterm"),
            ("HOME", "/root"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("SSH_AUTH_SOCK", "/run/s"),
            ("TERMINAL", "no"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept: Vec<_> = passed_env(vars.into_iter())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kept, os(&["RUST_BACKTRACE", "CARGO_PKG_NAME", "TERM"]));
    }

    #[test]
    fn mounts_for_a_target_inside_and_outside_the_project() {
        let inside = Layout {
            project: "/p".into(),
            target: Some("/p/target".into()),
        };
        let m = mounts(&inside, Path::new("/p/target/debug/deps/t-1"));
        assert_eq!(
            m,
            vec![
                Mount::RoBind {
                    src: "/p".into(),
                    dst: "/p".into()
                },
                Mount::Bind {
                    src: "/p/target/tmp".into(),
                    dst: "/p/target/tmp".into()
                },
            ]
        );
        let outside = Layout {
            project: "/p".into(),
            target: Some("/t".into()),
        };
        let m = mounts(&outside, Path::new("/t/debug/deps/t-1"));
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mount::RoBind {
                src: "/t".into(),
                dst: "/t".into()
            }
        );
        let bare = Layout {
            project: "/p".into(),
            target: None,
        };
        assert_eq!(mounts(&bare, Path::new("/usr/bin/true")).len(), 1);
        assert_eq!(mounts(&bare, Path::new("/opt/x/bin")).len(), 2);
    }
}

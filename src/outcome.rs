//! The verdict of a run, the same on every backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod report;

pub use report::{BadReport, REPORT_VERSION, Report, SetupError};

use crate::policy::Publish;

/// Which backend ran the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// Linux namespaces on the host kernel.
    Namespace,
    /// A microVM running our guest kernel.
    Vm,
}

/// The step of sandbox construction that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Preparing the run on the host (paths, pipes, plan).
    Prepare,
    /// Creating the namespaces (clone).
    Namespaces,
    /// Writing the uid/gid maps.
    IdMap,
    /// Building the filesystem view.
    Mounts,
    /// Switching to the new root.
    PivotRoot,
    /// Setting the hostname.
    Hostname,
    /// Bringing up loopback in the network namespace.
    Network,
    /// Switching to the sandbox user and dropping capabilities.
    Credentials,
    /// Changing to the working directory.
    Cwd,
    /// Setting up stdio and the init process.
    Init,
    /// Executing the program.
    Exec,
    /// Creating the run's cgroup and applying its limits.
    Cgroup,
    /// Applying landlock.
    Landlock,
    /// Compiling or installing the seccomp filter.
    Seccomp,
    /// Setting resource limits (rlimits).
    Rlimits,
    /// Starting or talking to the virtual machine.
    Vm,
}

impl Stage {
    /// Decodes the number a sandbox child reports.
    pub(crate) fn from_u32(n: u32) -> Stage {
        Stage::ALL.get(n as usize).copied().unwrap_or(Stage::Init)
    }

    /// Every stage, in declaration order (the child reports a stage by its number).
    pub const ALL: [Stage; 16] = [
        Stage::Prepare,
        Stage::Namespaces,
        Stage::IdMap,
        Stage::Mounts,
        Stage::PivotRoot,
        Stage::Hostname,
        Stage::Network,
        Stage::Credentials,
        Stage::Cwd,
        Stage::Init,
        Stage::Exec,
        Stage::Cgroup,
        Stage::Landlock,
        Stage::Seccomp,
        Stage::Rlimits,
        Stage::Vm,
    ];
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).expect("stage serialises");
        f.write_str(s.as_str().unwrap_or("unknown"))
    }
}

/// Why the sandbox could not start the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetupFailure {
    /// The failing step.
    pub stage: Stage,
    /// The OS error number, when a system call failed.
    pub errno: Option<i32>,
    /// What failed, on which path or syscall, and what to do about it.
    pub message: String,
}

impl std::fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sandbox setup failed at {}: {}",
            self.stage, self.message
        )
    }
}

/// Which time limit ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeLimit {
    /// The wall-clock limit (`Policy::timeout`): the whole tree was killed.
    Wall,
    /// The CPU-time limit (`Limits::cpu_time`) of the program.
    Cpu,
}

/// How the run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal.
    Signaled(i32),
    /// A time limit ran out.
    TimedOut(TimeLimit),
    /// The program was killed by the kernel's OOM killer at the memory limit.
    OomKilled,
    /// The sandbox could not be built or the program not started.
    SetupFailed(SetupFailure),
}

impl Status {
    /// How a process ended, from its raw wait status: `Signaled(N)` or `Exited(code)`.
    pub(crate) fn from_wait(raw: i32) -> Status {
        if libc::WIFSIGNALED(raw) {
            Status::Signaled(libc::WTERMSIG(raw))
        } else {
            Status::Exited(libc::WEXITSTATUS(raw))
        }
    }

    /// True when the program exited with code 0.
    pub fn success(&self) -> bool {
        *self == Status::Exited(0)
    }

    /// The exit code a shell would show: the program's own, 128+N for signal N, 124 on timeout, 127 when the
    /// program was not found, 126 when it could not be executed, 125 for any other sandbox failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Status::Exited(c) => *c,
            Status::Signaled(s) => 128 + s,
            Status::TimedOut(_) => 124,
            Status::OomKilled => 128 + libc::SIGKILL,
            Status::SetupFailed(f) if f.stage == Stage::Exec => match f.errno {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => 127,
                _ => 126,
            },
            Status::SetupFailed(_) => 125,
        }
    }

    /// The status name used in JSON reports.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Exited(_) => "exited",
            Status::Signaled(_) => "signaled",
            Status::TimedOut(_) => "timed_out",
            Status::OomKilled => "oom_killed",
            Status::SetupFailed(_) => "setup_failed",
        }
    }
}

/// Resources the run used, with where each figure came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Usage {
    /// Wall-clock time from spawn to the end of the last process.
    pub wall: Duration,
    /// User CPU time of the whole process tree.
    pub cpu_user: Duration,
    /// System CPU time of the whole process tree.
    pub cpu_sys: Duration,
    /// Peak resident memory in bytes, and its source.
    pub peak_memory_bytes: Option<u64>,
    /// Where the CPU and memory figures come from (`rusage`: the largest single process, not the tree).
    pub source: String,
}

/// What the cgroup enforced, for the verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CgroupEnforced {
    /// "v1" or "v2".
    pub version: String,
    /// The run's cgroup directories.
    pub paths: Vec<PathBuf>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Task limit.
    pub pids: Option<u64>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
}

/// What landlock really enforces, for the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LandlockEnforced {
    /// The ABI used: the kernel's, capped at the newest the landlock crate knows.
    pub landlock_abi: u32,
    /// The filesystem rights handled (denied unless a rule allows them).
    pub landlock_fs_rights: Vec<String>,
    /// TCP rules, when handled.
    pub net: Option<LandlockNetEnforced>,
    /// Scopes (ABI 6+): `abstract_unix_socket`, `signal`.
    pub scopes: Vec<String>,
}

/// The TCP part of [`LandlockEnforced`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LandlockNetEnforced {
    /// Rights handled: `bind_tcp`, `connect_tcp`.
    pub rights: Vec<String>,
    /// Ports that may be bound.
    pub tcp_bind: Vec<u16>,
    /// Ports that may be connected to.
    pub tcp_connect: Vec<u16>,
}

/// What was actually enforced for a run: the honest part of the verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Enforced {
    /// The namespaces the program runs in.
    pub namespaces: Vec<String>,
    /// The host uid and gid the sandbox user maps to.
    pub host_uid: u32,
    /// See `host_uid`.
    pub host_gid: u32,
    /// The user namespace's uid map: which inside ids are which host ids (inside the VM: the guest's).
    pub uid_map: Vec<IdExtent>,
    /// The gid map, likewise.
    pub gid_map: Vec<IdExtent>,
    /// The run's cgroup and its limits, when one was created.
    pub cgroup: Option<CgroupEnforced>,
    /// Resource limits set with setrlimit: name, soft value.
    pub rlimits: Vec<(String, u64)>,
    /// The seccomp profile: "default", "custom" or "none".
    pub seccomp: String,
    /// Whether denied system calls were counted (`denied_syscalls`).
    pub seccomp_audit: bool,
    /// Landlock's ABI and rights, when applied.
    pub landlock: Option<LandlockEnforced>,
    /// Every capability set is empty and the bounding set too; no-root secure bits are locked.
    pub capabilities_dropped: bool,
    /// Otherwise, the capabilities a program running as uid 0 inside keeps (in the sandbox's user namespace;
    /// see [`crate::Capability`]); every other one is dropped, the bounding set included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// What the policy asked for but this host could not enforce, and why.
    pub not_enforced: Vec<String>,
    /// The writable tmpfs mounts and their bounds (see [`crate::Policy::tmpfs_bounds`]).
    pub tmpfs: Vec<TmpfsBound>,
    /// The network the program had.
    pub network: NetworkEnforced,
    /// The root filesystem, when the policy gave one of its own (else the host system view or an empty root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsEnforced>,
}

/// The root filesystem of a run, for the verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RootfsEnforced {
    /// `image NAME:TAG` or `dir PATH`.
    pub source: String,
    /// The image's id (`sha256:` of its config), for an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The image's manifest digest, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// How the root is writable: `overlay on a tmpfs` (discarded), `overlay on DIR` (kept).
    pub writable: String,
    /// Whether the layers are shown through id-mapped mounts (a root caller's).
    pub idmapped: bool,
    /// The user the image's config or the policy's `rootfs.user` named, as resolved in the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The network of a run, for the verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NetworkEnforced {
    /// `none` (a network namespace with loopback only), `host` (the host's network) or `user` (a network
    /// namespace connected through the user-mode stack below).
    pub mode: String,
    /// With `user`: the user-mode stack and its program, e.g. `pasta /usr/bin/pasta`.
    pub helper: Option<String>,
    /// With `user`: the address the sandbox's `/etc/resolv.conf` names, which the helper forwards to the
    /// host's first name server.
    pub dns_forward: Option<String>,
    /// With `user`: the ports bound on the host, leading into the sandbox.
    pub published: Vec<Publish>,
}

/// One line of a user namespace's id map: inside ids `inside..inside + count` are host ids
/// `outside..outside + count`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdExtent {
    /// First id inside the sandbox.
    pub inside: u32,
    /// First id outside (on the host, or in the guest).
    pub outside: u32,
    /// How many.
    pub count: u32,
}

/// A writable tmpfs of the sandbox and the bounds it was mounted with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TmpfsBound {
    /// Where it is inside the sandbox.
    pub path: std::path::PathBuf,
    /// Its size in bytes (`size=`).
    pub size: u64,
    /// Its number of inodes (`nr_inodes=`).
    pub inodes: u64,
}

/// A system call the seccomp filter denied, and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The system call's name (or its number).
    pub syscall: String,
    /// How many times it was denied.
    pub count: u32,
}

/// How the VM backend ran the program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VmInfo {
    /// The engine: "qemu" or "builtin".
    pub engine: String,
    /// The accelerator: "kvm" or "tcg".
    pub accelerator: String,
    /// Why this accelerator.
    pub accelerator_reason: String,
    /// Guest uptime when the agent started, in milliseconds.
    pub boot_ms: Option<u64>,
    /// The end of the guest's kernel log, kept when the run failed.
    pub console_tail: Option<String>,
    /// The run was served by an already booted VM of a [`VmPool`](crate::VmPool).
    pub warm: bool,
    /// The VM was restored from a snapshot instead of booted (builtin engine).
    pub restored: bool,
}

/// The verdict of a run. It serialises as its [`Report`] (the CLI's `--report`, `docs/verdict.md`): captured
/// output is not part of it.
///
/// ```
/// use sandkasten::{Outcome, Sandbox, Status};
/// let o = Sandbox::new("/bin/sh").args(["-c", "kill -TERM $$"]).output()?;
/// assert_eq!(o.status, Status::Signaled(15));
/// assert_eq!(o.status.exit_code(), 128 + 15);
/// assert!(o.enforced.namespaces.iter().any(|n| n == "user"));
/// // The verdict as JSON (docs/verdict.md), and back.
/// let json = serde_json::to_string(&o).unwrap();
/// let back: Outcome = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.status, o.status);
/// # Ok::<(), sandkasten::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "Report", try_from = "Report")]
#[non_exhaustive]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Captured standard output (empty unless piped).
    pub stdout: Vec<u8>,
    /// Captured standard error (empty unless piped).
    pub stderr: Vec<u8>,
    /// Resources used.
    pub usage: Usage,
    /// Which backend ran it.
    pub backend: BackendKind,
    /// Why the backend was chosen over the preferred one, when Auto fell back.
    pub fallback_reason: Option<String>,
    /// What was enforced.
    pub enforced: Enforced,
    /// System calls the seccomp filter denied (with `audit_denials`).
    pub denied_syscalls: Vec<Denial>,
    /// The VM backend's engine and accelerator, when it ran the program.
    pub vm: Option<VmInfo>,
    /// What was captured of the piped streams ([`Sandbox::output`](crate::Sandbox::output),
    /// [`SandboxChild::wait_with_output`](crate::SandboxChild::wait_with_output)): totals, truncation, and
    /// whether the program was killed for writing too much ([`OutputLimit`]).
    pub capture: Capture,
}

/// How much of a piped stream [`Sandbox::output`](crate::Sandbox::output) and [`SandboxChild::wait_with_output`](crate::SandboxChild::wait_with_output) keep in memory, and
/// what happens beyond it. An untrusted program can write without end: the host keeps at most `max_bytes`
/// of each stream ([`OutputLimit::DEFAULT_BYTES`] unless set), says in [`Outcome::capture`] how much there
/// was and that it was cut, and with [`OutputLimit::kill_after`] kills the program at once.
///
/// ```
/// use sandkasten::{OutputLimit, Sandbox, Status};
/// let o = Sandbox::new("/bin/cat")
///     .arg("/dev/zero")
///     .output_limits(OutputLimit::kill_after(1024), OutputLimit::truncate(1024))
///     .output()?;
/// assert_eq!(o.stdout.len(), 1024);
/// assert!(o.capture.stdout_truncated && o.capture.killed_for_output);
/// assert_eq!(o.status, Status::Signaled(9));
/// # Ok::<(), sandkasten::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputLimit {
    /// The most bytes kept.
    pub max_bytes: u64,
    /// Kill the program as soon as it writes past `max_bytes` (else the rest is read and dropped).
    pub kill: bool,
}

impl OutputLimit {
    /// The default: 16 MiB of each stream, the rest dropped.
    pub const DEFAULT_BYTES: u64 = 16 << 20;

    /// Keeps the first `max_bytes`, reads and drops the rest.
    pub fn truncate(max_bytes: u64) -> OutputLimit {
        OutputLimit {
            max_bytes,
            kill: false,
        }
    }

    /// Keeps the first `max_bytes` and kills the program when it writes more (an online judge's output
    /// limit).
    pub fn kill_after(max_bytes: u64) -> OutputLimit {
        OutputLimit {
            max_bytes,
            kill: true,
        }
    }

    /// Keeps everything: the host's memory is the limit.
    pub fn unlimited() -> OutputLimit {
        OutputLimit::truncate(u64::MAX)
    }
}

impl Default for OutputLimit {
    fn default() -> Self {
        OutputLimit::truncate(OutputLimit::DEFAULT_BYTES)
    }
}

/// What was captured of a run's piped stdout and stderr, against their [`OutputLimit`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Capture {
    /// Bytes the program wrote to its stdout while it was read (kept or not).
    pub stdout_bytes: u64,
    /// Bytes the program wrote to its stderr while it was read (kept or not).
    pub stderr_bytes: u64,
    /// `Outcome::stdout` holds only the first bytes: the rest went over the limit.
    pub stdout_truncated: bool,
    /// `Outcome::stderr` holds only the first bytes: the rest went over the limit.
    pub stderr_truncated: bool,
    /// The program was killed because a stream went over a limit that kills ([`OutputLimit::kill_after`]); its status then is the kill's.
    pub killed_for_output: bool,
}

impl Outcome {
    /// The verdict of a run whose sandbox could not be built or whose program could not be started.
    pub fn setup_failed(failure: SetupFailure, backend: BackendKind) -> Outcome {
        Outcome {
            status: Status::SetupFailed(failure),
            stdout: Vec::new(),
            stderr: Vec::new(),
            usage: Usage::default(),
            backend,
            fallback_reason: None,
            enforced: Enforced::default(),
            denied_syscalls: Vec::new(),
            vm: None,
            capture: Capture::default(),
        }
    }

    /// The same verdict with another status.
    pub fn with_status(mut self, status: Status) -> Outcome {
        self.status = status;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stage: Stage, errno: i32) -> Status {
        Status::SetupFailed(SetupFailure {
            stage,
            errno: Some(errno),
            message: String::new(),
        })
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Status::Exited(3).exit_code(), 3);
        assert_eq!(Status::Signaled(9).exit_code(), 137);
        assert_eq!(Status::TimedOut(TimeLimit::Wall).exit_code(), 124);
        assert_eq!(Status::OomKilled.exit_code(), 137);
        assert_eq!(failed(Stage::Exec, libc::ENOENT).exit_code(), 127);
        assert_eq!(failed(Stage::Exec, libc::EACCES).exit_code(), 126);
        assert_eq!(failed(Stage::Mounts, libc::ENOENT).exit_code(), 125);
    }

    #[test]
    fn report_round_trip() {
        let mut o = Outcome::setup_failed(
            SetupFailure {
                stage: Stage::Exec,
                errno: Some(2),
                message: "cannot execute".into(),
            },
            BackendKind::Vm,
        );
        o.enforced.seccomp = "default".into();
        o.denied_syscalls.push(Denial {
            syscall: "bpf".into(),
            count: 2,
        });
        let back = Outcome::from_report_json(&o.report_json()).unwrap();
        assert_eq!(back.status, o.status);
        assert_eq!(back.backend, BackendKind::Vm);
        assert_eq!(back.enforced.seccomp, "default");
        assert_eq!(back.denied_syscalls, o.denied_syscalls);
        for status in [
            Status::Exited(3),
            Status::Signaled(9),
            Status::TimedOut(TimeLimit::Cpu),
            Status::OomKilled,
        ] {
            let mut o = o.clone();
            o.status = status.clone();
            assert_eq!(
                Outcome::from_report_json(&o.report_json()).unwrap().status,
                status
            );
        }
        assert!(Outcome::from_report_json(&serde_json::json!({"status": "odd"})).is_none());
    }

    #[test]
    fn the_vm_and_the_capture_survive_the_report() {
        let mut o = Outcome::setup_failed(
            SetupFailure {
                stage: Stage::Vm,
                errno: None,
                message: "m".into(),
            },
            BackendKind::Vm,
        )
        .with_status(Status::Signaled(9));
        o.vm = Some(VmInfo {
            engine: "qemu".into(),
            restored: true,
            boot_ms: Some(7),
            ..VmInfo::default()
        });
        o.capture = Capture {
            stdout_bytes: 10,
            stdout_truncated: true,
            killed_for_output: true,
            ..Capture::default()
        };
        let back = Outcome::from_report_json(&o.report_json()).unwrap();
        assert_eq!(back.vm, o.vm);
        assert_eq!(back.capture, o.capture);
        // Nothing captured: no `capture` key at all (a verdict without piped streams reads as before).
        assert!(
            Outcome::setup_failed(
                SetupFailure {
                    stage: Stage::Vm,
                    errno: None,
                    message: String::new()
                },
                BackendKind::Vm
            )
            .report_json()
            .get("capture")
            .is_none()
        );
    }

    #[test]
    fn stage_names() {
        assert_eq!(Stage::PivotRoot.to_string(), "pivot_root");
        for s in Stage::ALL {
            assert_eq!(
                Stage::from_u32(s as u32),
                s,
                "the child reports stages by number"
            );
        }
    }
}

//! The namespace backend: the program runs on the host kernel in new user, pid, mount, net, ipc, uts and cgroup
//! namespaces, on a fresh root built from the policy.
//!
//! Host side, in order: plan the filesystem view and prepare every string and descriptor → `clone` with the
//! new namespaces → write the uid/gid maps → connect the network namespace (user-mode networking: pasta,
//! [`network`]) → release the child → wait for its report (started, or which step failed). The child side is
//! [`child::main`].

pub mod cgroup;
pub(crate) mod child;
mod idmap;
pub mod landlock;
mod layers;
pub(crate) mod network;
pub(crate) mod plan;
pub(crate) mod rootfs;
pub mod seccomp;
pub(crate) mod session;
mod supervise;
pub(crate) mod sys;
mod view;

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The messages of a sandbox's init (for a session's verdict).
pub(crate) use child::msg as child_msg;
use child::{ChildSpec, msg};
use nix::sys::socket;

use crate::outcome::{Enforced, SetupFailure, Stage};
use crate::policy::{Network, Policy};

/// Default `PATH` inside the sandbox.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run, as the host-side API resolved it.
#[derive(Clone, Copy)]
pub(crate) struct Launch<'a> {
    pub program: &'a std::ffi::OsStr,
    /// The program's `argv[0]` when it is not `program`.
    pub arg0: Option<&'a std::ffi::OsStr>,
    pub args: &'a [std::ffi::OsString],
    pub env: &'a [(std::ffi::OsString, std::ffi::OsString)],
    pub cwd: Option<&'a Path>,
    pub policy: &'a Policy,
    /// Descriptors for the program's 0, 1, 2 (`-1`: inherit the host's).
    pub stdio: [RawFd; 3],
    /// Further descriptors for the program: `(descriptor here, number in the sandbox)`, numbers 3 and up.
    pub extra_fds: &'a [(RawFd, RawFd)],
    /// The caller is our guest agent (PID 1 of our VM): the sandbox maps a whole id range of the guest.
    pub guest: bool,
    /// A session: its init serves a control channel (and the program may be empty: none of its own).
    pub serve: Option<&'a session::Serve>,
}

impl Launch<'_> {
    /// Whether the sandbox gets a network namespace of its own. Not with `host`; not with `user` in our VM
    /// guest either: there the guest's own network is the user-mode one (its `eth0` leads to passt on the
    /// host, configured by the agent), and the sandbox uses it as a namespace sandbox uses pasta's.
    pub(crate) fn new_netns(&self) -> bool {
        match self.policy.network {
            Network::Host => false,
            Network::User => !self.guest,
            _ => true,
        }
    }

    /// Whether a helper connects the sandbox's network namespace (pasta for `user` outside our guest).
    fn user_helper(&self) -> bool {
        self.policy.network == Network::User && !self.guest
    }
}

/// A started sandbox, host side.
pub(crate) struct Started {
    /// Host pid of the sandbox's init.
    pub pid: libc::pid_t,
    /// pidfd of the init.
    pub pidfd: OwnedFd,
    /// Where the init reports the verdict.
    pub report: File,
    /// Held only to be closed: the init watches the other end and ends the sandbox when this closes (`None`:
    /// a session that outlives this process).
    pub _death: Option<OwnedFd>,
    /// The run's cgroup (removed when the last holder drops it, after the init was reaped; a session's
    /// commands hold it too, to tell an out-of-memory kill).
    pub cgroup: Option<std::sync::Arc<cgroup::RunCgroup>>,
    /// pasta, with user-mode networking: ended when this is dropped.
    pub _network: Option<network::pasta::Helper>,
    /// What is enforced.
    pub enforced: Enforced,
    /// The CPU-time limit, to tell a CPU timeout from a plain signal.
    pub cpu_time: Option<std::time::Duration>,
    /// The block of host ids this run holds (root callers), released once the run was reaped.
    pub _ids: Option<idmap::Lease>,
    /// The root filesystem of the policy's own: holds its image's layers in the store until the run ends.
    pub _root: Option<rootfs::Root>,
    /// What the child was made from, freed with this, after the init was reaped: until then the init shares
    /// these pages copy-on-write, and freeing them made the allocator write into a dozen shared pages, each
    /// write a copy of its page (~70 us of a run, `perf record -g` of `sandbox-bench --only lib-bare`).
    pub _made_from: Option<MadeFrom>,
}

/// The child's specification and the plan it was made from, kept for [`Started::_made_from`]. Holds no
/// descriptor: the plan's copied files are closed once the child is released.
pub(crate) struct MadeFrom {
    _spec: ChildSpec,
    _plan: plan::Plan,
}

// SAFETY: the only part that is not `Send` is the spec's argv and envp pointers, which point into the spec's
// own strings and are never read again on the host.
unsafe impl Send for MadeFrom {}

fn setup_error(stage: Stage, errno: Option<i32>, message: impl Into<String>) -> SetupFailure {
    SetupFailure {
        stage,
        errno,
        message: message.into(),
    }
}

fn os_error(stage: Stage, what: &str, e: std::io::Error) -> SetupFailure {
    setup_error(stage, e.raw_os_error(), format!("{what}: {e}"))
}

fn c(bytes: &[u8], what: &str) -> Result<CString, SetupFailure> {
    CString::new(bytes)
        .map_err(|_| setup_error(Stage::Prepare, None, format!("{what} contains a NUL byte")))
}

/// An O_CLOEXEC pipe: `(read end, write end)`.
fn pipe() -> Result<(OwnedFd, OwnedFd), SetupFailure> {
    let [r, w] = sys::pipe().map_err(|e| {
        os_error(
            Stage::Prepare,
            "pipe2",
            std::io::Error::from_raw_os_error(e),
        )
    })?;
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// The executable paths to try for `program`, like execvp with the sandbox's PATH.
fn candidates(program: &std::ffi::OsStr, path_var: &[u8]) -> Result<Vec<CString>, SetupFailure> {
    let bytes = program.as_bytes();
    if bytes.is_empty() {
        return Err(setup_error(
            Stage::Exec,
            Some(libc::ENOENT),
            "the program name is empty",
        ));
    }
    if bytes.contains(&b'/') {
        return Ok(vec![c(bytes, "program path")?]);
    }
    path_var
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(bytes);
            c(&full, "PATH entry")
        })
        .collect()
}

/// Builds the child's specification: every string and pointer the child will use.
fn prepare(
    launch: &Launch<'_>,
    root: Option<&rootfs::Root>,
) -> Result<(ChildSpec, plan::Plan), SetupFailure> {
    let policy = launch.policy;
    policy
        .validate()
        .map_err(|e| setup_error(Stage::Prepare, None, e.to_string()))?;
    let mut plan = plan::plan_with_root(policy, root)
        .map_err(|e| setup_error(Stage::Mounts, None, e.to_string()))?;

    let mut env: Vec<CString> = Vec::new();
    let mut path_var = DEFAULT_PATH.as_bytes().to_vec();
    if !launch.env.iter().any(|(k, _)| k == "PATH") {
        env.push(c(format!("PATH={DEFAULT_PATH}").as_bytes(), "PATH")?);
    }
    for (k, v) in launch.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(setup_error(
                Stage::Prepare,
                None,
                format!("environment variable name {k:?} is invalid"),
            ));
        }
        if k == "PATH" {
            path_var = v.as_bytes().to_vec();
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(c(&kv, "environment variable")?);
    }
    let arg0 = launch.arg0.unwrap_or(launch.program);
    let mut argv_owned = vec![c(arg0.as_bytes(), "program name")?];
    for a in launch.args {
        argv_owned.push(c(a.as_bytes(), "argument")?);
    }
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let cwd = match launch.cwd {
        Some(d) if !d.is_absolute() => {
            return Err(setup_error(
                Stage::Cwd,
                None,
                format!("working directory {d:?} is not absolute"),
            ));
        }
        Some(d) => c(d.as_os_str().as_bytes(), "working directory")?,
        None => c(b"/", "working directory")?,
    };
    let mut fd_map: Vec<(RawFd, RawFd)> = (0..3)
        .filter(|&i| launch.stdio[i as usize] >= 0)
        .map(|i| (launch.stdio[i as usize], i))
        .collect();
    for &(src, target) in launch.extra_fds {
        if target < 3 || fd_map.iter().any(|&(_, t)| t == target) {
            return Err(setup_error(
                Stage::Prepare,
                None,
                format!("descriptor number {target} for the sandbox is below 3 or given twice"),
            ));
        }
        fd_map.push((src, target));
    }
    let spec = ChildSpec {
        steps: std::mem::take(&mut plan.steps),
        source_fds: vec![-1; plan.sources.len()],
        tree_fds: vec![-1; plan.trees.len()],
        sources: plan.sources.clone(),
        hostname: policy.hostname.as_bytes().to_vec(),
        loopback: launch.new_netns(),
        cwd,
        candidates: if launch.program.is_empty() && launch.serve.is_some() {
            Vec::new()
        } else {
            candidates(launch.program, &path_var)?
        },
        argv: ptrs(&argv_owned),
        envp: ptrs(&env),
        _argv: argv_owned,
        _envp: env,
        uid: policy.uid,
        gid: policy.gid,
        drop_groups: false,
        groups: policy.groups.clone(),
        capabilities: crate::policy::Capability::mask(&policy.capabilities),
        fd_map: fd_map.clone(),
        fd_floor: fd_map.iter().map(|&(_, t)| t + 1).max().unwrap_or(3).max(3),
        keep: vec![
            -1;
            6 + fd_map.len() + launch.serve.map_or(0, |s| s.held.len()) + plan.copies.len()
        ],
        sync_fd: -1,
        placement: false,
        report_fd: -1,
        death_fd: -1,
        argv_area: argv_area(),
        filter: None,
        landlock_fd: -1,
        landlock_rules: Vec::new(),
        rlimits: Vec::new(),
        timeout_ms: policy
            .timeout
            .map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64),
        serve: launch.serve.map(|s| child::serve::ServeSpec {
            control: s.control,
            listens: s.listens,
            wait_start: s.wait_start,
            held: s.held.clone(),
            status: s.status,
            request: vec![0; child::serve::MAX_REQUEST],
            ptrs: vec![std::ptr::null(); child::serve::MAX_STRINGS],
            execs: child::serve::Exec::table(),
        }),
    };
    Ok((spec, plan))
}

/// The `[arg_start, arg_end)` addresses of this process's command line (fields 48 and 49 of /proc/self/stat),
/// read once: they never change during a process's life.
fn argv_area() -> (usize, usize) {
    static AREA: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *AREA.get_or_init(read_argv_area)
}

fn read_argv_area() -> (usize, usize) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<usize> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    match (f.get(45), f.get(46)) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, 0),
    }
}

/// Starts the program in a new sandbox. Returns once the program was executed, or with the step that failed.
pub(crate) fn spawn(launch: &Launch<'_>) -> Result<Box<Started>, SetupFailure> {
    let root = rootfs::resolve(launch.policy, launch.guest)?;
    let Some(root) = root else {
        return spawn_on(launch, None);
    };
    // The root's config fills in what the run does not set itself; its user becomes the policy's.
    let applied = root.apply(launch)?;
    let mut started = spawn_on(&applied.launch(launch), Some(&root))?;
    started.enforced.rootfs = Some(root.report.clone());
    started._root = Some(root);
    Ok(started)
}

/// Starts a session's sandbox (`launch.serve` set); also returns the environment and working directory its
/// commands start from (its root's image config under the launch's own).
#[allow(clippy::type_complexity)]
pub(crate) fn spawn_session(
    launch: &Launch<'_>,
) -> Result<
    (
        Box<Started>,
        Vec<(std::ffi::OsString, std::ffi::OsString)>,
        Option<std::path::PathBuf>,
    ),
    SetupFailure,
> {
    let Some(root) = rootfs::resolve(launch.policy, launch.guest)? else {
        let started = spawn_on(launch, None)?;
        return Ok((
            started,
            launch.env.to_vec(),
            launch.cwd.map(Path::to_path_buf),
        ));
    };
    let applied = root.apply(launch)?;
    let mut started = spawn_on(&applied.launch(launch), Some(&root))?;
    started.enforced.rootfs = Some(root.report.clone());
    started._root = Some(root);
    Ok((started, applied.env, applied.cwd))
}

/// The policy's supplementary groups can be had: `setgroups` is allowed and the gid map covers each.
fn groups(policy: &crate::Policy, maps: &idmap::IdMaps) -> Result<(), SetupFailure> {
    if policy.groups.is_empty() {
        return Ok(());
    }
    if !maps.may_drop_groups() {
        return Err(setup_error(
            Stage::Credentials,
            None,
            "supplementary groups need a user namespace that maps more than one id (setgroups is denied \
             with a one-id map): give this user subordinate ids (/etc/subuid, /etc/subgid, newuidmap), or \
             leave the groups out",
        ));
    }
    let (_, gids) = maps.extents();
    if let Some(g) = policy.groups.iter().find(|&&g| {
        !gids
            .iter()
            .any(|e| g >= e.inside && u64::from(g) < u64::from(e.inside) + u64::from(e.count))
    }) {
        return Err(setup_error(
            Stage::Credentials,
            None,
            format!(
                "supplementary group {g} is not mapped by the sandbox's gid map: widen the id range"
            ),
        ));
    }
    Ok(())
}

/// Returns the run boxed, in a box allocated before `clone`: a large allocation after it may have the
/// allocator consolidate its free chunks, writing into pages the init shares copy-on-write.
fn spawn_on(
    launch: &Launch<'_>,
    root: Option<&rootfs::Root>,
) -> Result<Box<Started>, SetupFailure> {
    let slot = Box::<Started>::new_uninit();
    let (mut spec, mut plan) = prepare(launch, root)?;
    if launch.user_helper() {
        // Before anything is started: no pasta, no run.
        network::pasta::find()?;
    }
    let mut maps = idmap::IdMaps::for_caller(launch.policy, launch.guest)?;
    if let Some(r) = root.filter(|_| launch.guest) {
        // The VMM's shares show every file of the layers as one guest id: the sandbox's root is that id.
        maps.give_root_to(r.owner);
    }
    spec.drop_groups = maps.may_drop_groups();
    groups(launch.policy, &maps)?;
    if let Some(serve) = spec.serve.as_mut()
        && launch.serve.is_some_and(|s| s.detached)
    {
        // A session that outlives this process: its init holds what this process would have held for it.
        if launch.policy.network == Network::User {
            return Err(setup_error(
                Stage::Network,
                None,
                "user-mode networking (pasta) is not available to a session that outlives its creator yet: \
                 use the network modes none or host",
            ));
        }
        serve.held.extend(maps.lease.as_ref().map(|l| l.lock_fd()));
        if let Some(c) = root.and_then(|r| r._checkout.as_ref()) {
            serve.held.extend(c.lock_fds());
        }
        let len = spec.keep.len() + serve.held.len();
        spec.keep = vec![-1; len];
    }
    let mut layers = layers::prepare(launch.policy, &plan, maps.host_ids())?;
    (layers.enforced.uid_map, layers.enforced.gid_map) = maps.extents();
    layers.enforced.not_enforced.extend(maps.note.take());
    spec.filter = layers.filter;
    spec.landlock_fd = layers
        .landlock
        .as_ref()
        .map_or(-1, |l| l.ruleset_fd.as_raw_fd());
    spec.landlock_rules = layers.landlock_rules;
    spec.rlimits = layers.rlimits;
    let run_cgroup = layers.cgroup;

    // The release channel: a SOCK_SEQPACKET pair, which can carry the root's id-mapped trees.
    let (sync_rd, sync_wr) = socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| os_error(Stage::Prepare, "socketpair", e.into()))?;
    let (report_rd, report_wr) = pipe()?;
    // A session that outlives this process has no death pipe.
    let (death_rd, death_wr) = match launch.serve {
        Some(s) if s.detached => (None, None),
        _ => {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        }
    };
    spec.sync_fd = sync_rd.as_raw_fd();
    spec.report_fd = report_wr.as_raw_fd();
    spec.death_fd = death_rd.as_ref().map_or(-1, |d| d.as_raw_fd());
    spec.placement = run_cgroup.is_some();

    // The cgroup namespace is unshared by the child once it sits in the run's cgroup.
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if launch.new_netns() {
        flags |= libc::CLONE_NEWNET;
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the child branch only runs `child::main`, which makes raw system calls on data prepared above
    // and leaves through _exit; it never returns into Rust code that could allocate or unwind.
    let pid = unsafe {
        sys::clone(
            flags as libc::c_ulong | sys::CLONE_PIDFD | libc::SIGCHLD as libc::c_ulong,
            &mut pidfd,
        )
    };
    let pid = match pid {
        Ok(0) => child::main(&mut spec),
        Ok(pid) => pid,
        Err(e) => {
            return Err(setup_error(
                Stage::Namespaces,
                Some(e),
                format!(
                    "clone(CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNS|...) failed: {}; this host does not let this user \
                     create namespaces (check the sysctls user.max_user_namespaces and \
                     kernel.unprivileged_userns_clone, or AppArmor's userns restriction), or use the VM backend",
                    std::io::Error::from_raw_os_error(e)
                ),
            ));
        }
    };
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((sync_rd, report_wr, death_rd));
    let mut report = File::from(report_rd);

    let mut helper = None;
    let release = maps
        .write(pid)
        .map_err(SetupFailure::from)
        // The network is connected while the child waits: the program starts with it up.
        .and_then(|()| match launch.user_helper() {
            true => network::connect(launch.policy, pid, &maps).map(|h| helper = h),
            false => Ok(()),
        })
        // A root caller's root filesystem: its layers mapped through the child's user namespace.
        .and_then(|()| rootfs::idmapped_trees(pid, &plan.trees))
        .and_then(|trees| release(&sync_wr, &trees))
        // The run's cgroup, while the child builds its view (a move into a cgroup waits for an RCU grace
        // period); the child waits for the second release before it starts anything.
        .and_then(|()| match &run_cgroup {
            Some(cg) => cg
                .add(pid)
                .map_err(|e| setup_error(Stage::Cgroup, None, e.to_string()))
                .and_then(|()| release(&sync_wr, &[])),
            None => Ok(()),
        });
    drop(sync_wr);
    if let Err(e) = release {
        kill_and_reap(pid);
        return Err(e);
    }

    let mut buf = [0u8; msg::LEN];
    let got = read_message(&mut report, &mut buf);
    drop(std::mem::take(&mut plan.copies));
    match got.map(|()| msg::decode(&buf)) {
        Ok([msg::STARTED, ..]) => Ok(Box::write(
            slot,
            Started {
                pid,
                pidfd,
                report,
                _death: death_wr,
                cgroup: run_cgroup.map(std::sync::Arc::new),
                enforced: Enforced {
                    network: network::enforced(launch.policy, helper.as_ref()),
                    ..layers.enforced
                },
                _network: helper,
                cpu_time: launch.policy.limits.cpu_time,
                _ids: maps.lease.take(),
                _root: None,
                _made_from: Some(MadeFrom {
                    _spec: spec,
                    _plan: plan,
                }),
            },
        )),
        Ok([msg::SETUP_FAILED, stage, step, errno]) => {
            kill_and_reap(pid);
            Err(describe_failure(
                &spec,
                Stage::from_u32(stage),
                step,
                errno as i32,
                launch.program,
            ))
        }
        other => {
            let status = kill_and_reap(pid);
            Err(setup_error(
                Stage::Init,
                None,
                format!(
                    "the sandbox ended before starting the program (report {other:?}, wait status {status})"
                ),
            ))
        }
    }
}

/// Releases the waiting child: one byte, with the id-mapped trees of its root (if any) as `SCM_RIGHTS`.
fn release(sync: &OwnedFd, trees: &[OwnedFd]) -> Result<(), SetupFailure> {
    if trees.len() > sys::MAX_PASSED_FDS {
        return Err(setup_error(
            Stage::Mounts,
            Some(libc::E2BIG),
            format!(
                "{} id-mapped trees; the child takes at most {}",
                trees.len(),
                sys::MAX_PASSED_FDS
            ),
        ));
    }
    let fds: Vec<RawFd> = trees.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [socket::ControlMessage::ScmRights(&fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
    let iov = [std::io::IoSlice::new(b"x")];
    loop {
        match socket::sendmsg::<()>(
            sync.as_raw_fd(),
            &iov,
            cmsgs,
            socket::MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            r => {
                return r
                    .map(drop)
                    .map_err(|e| os_error(Stage::IdMap, "release", e.into()));
            }
        }
    }
}

/// Reads exactly one report message.
pub(crate) fn read_message(report: &mut File, buf: &mut [u8; msg::LEN]) -> std::io::Result<()> {
    report.read_exact(buf)
}

fn kill_and_reap(pid: libc::pid_t) -> i32 {
    sys::kill(pid, libc::SIGKILL);
    sys::wait_pid(pid).unwrap_or(-1)
}

/// Turns a child's failure report into a message naming the step, path and fix.
fn describe_failure(
    spec: &ChildSpec,
    stage: Stage,
    step: u32,
    errno: i32,
    program: &std::ffi::OsStr,
) -> SetupFailure {
    let err = std::io::Error::from_raw_os_error(errno);
    let what = match stage {
        Stage::Exec => format!("cannot execute {program:?}: {err}"),
        Stage::Cwd => format!(
            "cannot change to the working directory {:?}: {err}",
            spec.cwd
        ),
        Stage::Hostname => format!("sethostname failed: {err}"),
        Stage::Network => format!("cannot bring up loopback in the new network namespace: {err}"),
        Stage::Credentials => format!(
            "cannot switch to uid {} gid {} and drop capabilities: {err}",
            spec.uid, spec.gid
        ),
        Stage::Mounts if step >= u32::MAX - spec.sources.len() as u32 => {
            let path = &spec.sources[(u32::MAX - 1 - step) as usize];
            format!("cannot open the bind source {path:?}: {err}")
        }
        _ => match spec.steps.get(step as usize) {
            Some(s) => {
                let s = match &s.op {
                    plan::Op::BindSource { source, dst } => format!(
                        "bind mount of {:?} on {dst:?}",
                        spec.sources
                            .get(*source)
                            .map(|p| p.to_string_lossy())
                            .unwrap_or_default()
                    ),
                    op => op.to_string(),
                };
                let hint = match errno {
                    libc::EPERM | libc::EACCES => {
                        "; the kernel refused this mount in an unprivileged user namespace (a locked or \
                         restricted mount, or a security module)"
                    }
                    libc::ENOENT => "; a path of the view is missing",
                    _ => "",
                };
                format!("{s} failed: {err}{hint}")
            }
            None => format!("{err}"),
        },
    };
    setup_error(stage, Some(errno), what)
}

//! The sandbox side: what runs after `clone`, as one linear function, then the tiny PID 1.
//!
//! This code runs in a copy of a possibly multi-threaded host process: it must not allocate, take locks or
//! panic. Everything it needs was prepared by the host in a [`ChildSpec`]; failures are reported as a fixed-size
//! message through the report pipe and end the child.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use libc::c_char;

pub mod serve;

use super::plan::{Op, SOURCE_FD_DIR, Step};
use super::sys::{self, Errno};
use super::{landlock, seccomp};
use crate::outcome::Stage;

/// Messages on the report pipe, child to host: four native-endian `u32` words, written atomically.
pub mod msg {
    /// Setup failed: stage, step index (or `u32::MAX`), errno.
    pub const SETUP_FAILED: u32 = 1;
    /// The program was executed.
    pub const STARTED: u32 = 2;
    /// The program ended: raw wait status.
    pub const EXITED: u32 = 3;
    /// The wall-clock limit ran out.
    pub const TIMED_OUT: u32 = 4;
    /// The seccomp filter denied a system call: number, count (sent before EXITED).
    pub const DENIED: u32 = 5;
    /// An exec of a session ended: its peak resident memory in KiB (sent before its EXITED, whose words 2
    /// and 3 are then its user and system CPU time in ms).
    pub const USAGE: u32 = 6;
    /// Request (host to a session's init): run a command. Words: candidates, arguments, environment
    /// entries; then the strings; descriptors: reply socket, stdin, stdout, stderr. Replies on the reply
    /// socket: STARTED (in-sandbox pid, with a pidfd) or SETUP_FAILED; later USAGE and EXITED.
    pub const EXEC: u32 = 10;
    /// Request: start the session's waiting program. Optional descriptor: a reply socket (STARTED or
    /// SETUP_FAILED).
    pub const START: u32 = 11;
    /// Request: send signal word 1 to the program (word 2 = 0; every process when there is none), to every
    /// process (word 2 = 1), or to the process group word 3 (word 2 = 2: an exec's).
    pub const SIGNAL: u32 = 12;
    /// Request: stop the session: SIGTERM to every process, SIGKILL after word 1 ms; the init then reports
    /// and ends.
    pub const STOP: u32 = 13;
    /// Size of one message.
    pub const LEN: usize = 16;

    /// Encodes a message.
    pub fn encode(words: [u32; 4]) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// Decodes a message.
    pub fn decode(buf: &[u8; LEN]) -> [u32; 4] {
        let mut words = [0u32; 4];
        for (w, chunk) in words.iter_mut().zip(buf.chunks_exact(4)) {
            *w = u32::from_ne_bytes(chunk.try_into().expect("4 bytes"));
        }
        words
    }
}

/// Everything the child needs, prepared before `clone`.
pub struct ChildSpec {
    /// Filesystem steps, from the host root to the finished new root.
    pub steps: Vec<Step>,
    /// Host paths of bind sources, opened `O_PATH` before the child leaves the caller's credentials.
    pub sources: Vec<CString>,
    /// Descriptors of the opened sources (filled in by the child; as long as `sources`).
    pub source_fds: Vec<RawFd>,
    /// Descriptors of the id-mapped trees the host sends with the release (filled in by the child; as long
    /// as the plan's `trees`).
    pub tree_fds: Vec<RawFd>,
    /// Hostname to set (UTS namespace).
    pub hostname: Vec<u8>,
    /// Bring loopback up (own network namespace).
    pub loopback: bool,
    /// Working directory inside the sandbox.
    pub cwd: CString,
    /// Absolute paths to try executing, in order.
    pub candidates: Vec<CString>,
    /// NULL-terminated argv (pointers into `_argv`).
    pub argv: Vec<*const c_char>,
    /// NULL-terminated envp (pointers into `_envp`).
    pub envp: Vec<*const c_char>,
    /// Owners of the argv strings.
    pub _argv: Vec<CString>,
    /// Owners of the envp strings.
    pub _envp: Vec<CString>,
    /// Sandbox user and group.
    pub uid: u32,
    pub gid: u32,
    /// Whether `setgroups` is permitted (root callers) so supplementary groups can be dropped.
    pub drop_groups: bool,
    /// The supplementary groups the program gets (only with `drop_groups`; checked before the clone).
    pub groups: Vec<libc::gid_t>,
    /// Capabilities the program keeps when it runs as uid 0 inside (a mask; 0: none, the default).
    pub capabilities: u64,
    /// Descriptors to install: `(source, target)`, the program's 0, 1, 2 (unless inherited) and any extra
    /// descriptors passed in. Targets are distinct.
    pub fd_map: Vec<(RawFd, RawFd)>,
    /// Descriptors below this number are lifted above it before installing `fd_map` (its largest target + 1).
    pub fd_floor: RawFd,
    /// Scratch space for the list of descriptors to keep (the internal ones, `fd_map`'s, a session's, the copied
    /// files'; filled by the child).
    pub keep: Vec<RawFd>,
    /// The child receives one byte here (with the id-mapped trees, if any) once the host has written the id
    /// maps: a `SOCK_SEQPACKET` socket. With `placement`, a second byte once the host has put it in the
    /// run's cgroup.
    pub sync_fd: RawFd,
    /// The run has a cgroup, which the host joins the child to while the child builds its view (moving a
    /// process into a cgroup waits for an RCU grace period, milliseconds): the child waits for it before
    /// it makes its cgroup namespace, and so before anything it starts.
    pub placement: bool,
    /// The child writes [`msg`] messages here.
    pub report_fd: RawFd,
    /// Hangs up when the host process dies: the sandbox then ends itself.
    pub death_fd: RawFd,
    /// Wall-clock limit in milliseconds, or -1.
    pub timeout_ms: i64,
    /// The host process's argv area, overwritten so the sandbox cannot read the host's arguments.
    pub argv_area: (usize, usize),
    /// The seccomp filter the init installs before forking the program.
    pub filter: Option<seccomp::Filter>,
    /// The landlock ruleset (`-1`: no landlock).
    pub landlock_fd: RawFd,
    /// Landlock rules for paths that exist only inside the sandbox: path, access.
    pub landlock_rules: Vec<(CString, u64)>,
    /// `(resource, soft, hard)` for setrlimit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// A session: its control channel and buffers (`None`: a one-shot run). With no `candidates` a session
    /// has no program of its own and runs only what it is asked to.
    pub serve: Option<serve::ServeSpec>,
}

/// Sends a setup failure to the host and ends the process.
fn fail(report: RawFd, stage: Stage, step: u32, errno: Errno) -> ! {
    let _ = sys::write_all(
        report,
        &msg::encode([msg::SETUP_FAILED, stage as u32, step, errno as u32]),
    );
    sys::exit(125)
}

/// Writes `prefix` followed by the decimal `n` and a NUL into `buf`; returns the C string.
fn fd_path<'a>(buf: &'a mut [u8; 64], prefix: &str, n: RawFd) -> &'a CStr {
    let p = prefix.as_bytes();
    buf[..p.len()].copy_from_slice(p);
    let mut digits = [0u8; 10];
    let d = sys::decimal(&mut digits, n.max(0) as u32);
    buf[p.len()..p.len() + d.len()].copy_from_slice(d);
    buf[p.len() + d.len()] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/")
}

/// Runs one filesystem step.
fn run_step(op: &Op, source_fds: &[RawFd], tree_fds: &[RawFd]) -> Result<(), Errno> {
    match op {
        Op::AttachTree { tree, dst } => {
            sys::attach_tree(tree_fds.get(*tree).copied().unwrap_or(-1), dst)
        }
        Op::BindSource { source, dst } => {
            let mut buf = [0u8; 64];
            let fd = source_fds.get(*source).copied().unwrap_or(-1);
            let src = fd_path(&mut buf, SOURCE_FD_DIR, fd);
            sys::mount(Some(src), dst, None, libc::MS_BIND | libc::MS_REC, None)
        }
        Op::Mount {
            src,
            dst,
            fstype,
            flags,
            data,
        } => sys::mount(
            src.as_deref(),
            dst,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Op::SetAttr {
            path,
            set,
            recursive,
        } => sys::mount_setattr(path, *set, *recursive),
        Op::Mkdir { path, mode } => sys::mkdir(path, *mode),
        // EINVAL: the user namespace maps no such id (a single-id map of a run that is not uid 0): the entry
        // keeps its owner, the run's user, the only one there is.
        Op::Chown { path, uid, gid } => match sys::lchown(path, *uid, *gid) {
            Err(libc::EINVAL) => Ok(()),
            r => r,
        },
        Op::Touch { path } => sys::touch(path),
        Op::WriteFile { path, contents } => sys::write_file(path, contents),
        Op::CopyFile { path, fd, limit } => {
            let copied = sys::copy_file(*fd, path, *limit);
            // Copied once: init holds no host file open for the run.
            sys::close(*fd);
            copied
        }
        Op::Symlink { target, path } => sys::symlink(target, path),
        Op::PivotRoot { new_root, put_old } => sys::pivot_root(new_root, put_old),
        Op::Chdir { path } => sys::chdir(path),
        Op::Detach { path } => sys::umount2(path, libc::MNT_DETACH),
        Op::Mask { path } => match sys::is_dir(path)? {
            None => Ok(()),
            Some(true) => sys::mount(
                Some(c"tmpfs"),
                path,
                Some(c"tmpfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some(c"mode=0755,size=4096,nr_inodes=1"),
            ),
            Some(false) => sys::mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None),
        },
        Op::ReadOnly { path } => match sys::is_dir(path)? {
            None => Ok(()),
            Some(_) => {
                sys::mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
                sys::mount_setattr(path, sys::MOUNT_ATTR_RDONLY, true)
            }
        },
    }
}

/// The child's whole setup, top to bottom. Never returns.
pub fn main(spec: &mut ChildSpec) -> ! {
    let report = spec.report_fd;
    let none = u32::MAX;
    // While the host thread waits in spawn() for our report, its death must end us too (init later
    // watches the death pipe instead, which follows the host process rather than one thread).
    sys::parent_death_signal(libc::SIGKILL);
    sys::set_process_name(c"sandbox-init", spec.argv_area);

    // 1. Descriptors: lift every descriptor we need above all target numbers (so installing one cannot
    //    clobber another), install the program's stdio and any passed descriptors at their numbers, then close
    //    every other inherited descriptor.
    let floor = spec.fd_floor;
    let lift = |fd: &mut RawFd| {
        if *fd >= 0 && *fd < floor {
            match sys::dup_above(*fd, floor) {
                Ok(new) => *fd = new,
                Err(e) => fail(report, Stage::Init, none, e),
            }
        }
    };
    lift(&mut spec.sync_fd);
    lift(&mut spec.report_fd);
    lift(&mut spec.death_fd);
    lift(&mut spec.landlock_fd);
    for (src, _) in spec.fd_map.iter_mut() {
        lift(src);
    }
    for step in spec.steps.iter_mut() {
        if let Op::CopyFile { fd, .. } = &mut step.op {
            lift(fd);
        }
    }
    if let Some(s) = spec.serve.as_mut() {
        lift(&mut s.control);
        lift(&mut s.status);
        for fd in s.held.iter_mut() {
            lift(fd);
        }
    }
    let report = spec.report_fd;
    for &(src, target) in &spec.fd_map {
        if let Err(e) = sys::dup2(src, target) {
            fail(report, Stage::Init, none, e);
        }
    }
    let internal = [
        spec.sync_fd,
        spec.report_fd,
        spec.death_fd,
        spec.landlock_fd,
    ];
    let own = spec.serve.as_ref().map(|s| [s.control, s.status]);
    let (control, held) = match (&own, &spec.serve) {
        (Some(own), Some(s)) => (&own[..], &s.held[..]),
        _ => (&[][..], &[][..]),
    };
    for (slot, fd) in spec.keep.iter_mut().zip(
        internal
            .iter()
            .chain(spec.fd_map.iter().map(|(_, t)| t))
            .chain(control)
            .chain(held)
            .chain(spec.steps.iter().filter_map(|s| match &s.op {
                Op::CopyFile { fd, .. } => Some(fd),
                _ => None,
            })),
    ) {
        *slot = *fd;
    }
    spec.keep.sort_unstable();
    if let Err(e) = sys::close_all_except(&spec.keep) {
        fail(report, Stage::Init, none, e);
    }

    // 2. Wait until the host has written our uid/gid maps (end of file: the host gave up); the release
    //    carries the id-mapped trees of the root, if any.
    match sys::recv_with_fds(spec.sync_fd, &mut spec.tree_fds) {
        Ok((1, got)) if got == spec.tree_fds.len() => {}
        Ok((1, _)) => fail(report, Stage::Mounts, none, libc::EPROTO),
        Ok(_) => sys::exit(125),
        Err(e) => fail(report, Stage::Init, none, e),
    }
    if !spec.placement {
        sys::close(spec.sync_fd);
    }

    // 3. Open the bind sources with the caller's credentials (a root caller may bind what only root can
    //    reach), then become the sandbox user, whose ids the new namespace maps, keeping capabilities in it.
    for (i, path) in spec.sources.iter().enumerate() {
        match sys::open_path(path) {
            Ok(fd) => spec.source_fds[i] = fd,
            Err(e) => fail(report, Stage::Mounts, u32::MAX - 1 - i as u32, e),
        }
    }
    if let Err(e) = sys::set_ids(spec.uid, spec.gid, spec.drop_groups, &spec.groups) {
        fail(report, Stage::Credentials, none, e);
    }
    // 4. The filesystem view, ending with pivot_root into it and the host root detached.
    for (i, step) in spec.steps.iter().enumerate() {
        if let Err(e) = run_step(&step.op, &spec.source_fds, &spec.tree_fds) {
            fail(report, step.stage, i as u32, e);
        }
    }
    for &fd in spec.source_fds.iter().chain(&spec.tree_fds) {
        sys::close(fd);
    }

    // 5. Hostname and loopback in our own UTS and network namespaces.
    if let Err(e) = sys::sethostname(&spec.hostname) {
        fail(report, Stage::Hostname, none, e);
    }
    if spec.loopback
        && let Err(e) = sys::interface_up(c"lo")
    {
        fail(report, Stage::Network, none, e);
    }

    // The run's cgroup: wait until the host has placed us in it (it did so while we built the view), then
    // make it the root of our cgroup view. Nothing has been started yet, so nothing stays outside.
    if spec.placement {
        let mut none_fds: [RawFd; 0] = [];
        match sys::recv_with_fds(spec.sync_fd, &mut none_fds) {
            Ok((1, 0)) => {}
            Ok((1, _)) => fail(report, Stage::Cgroup, none, libc::EPROTO),
            Ok(_) => sys::exit(125),
            Err(e) => fail(report, Stage::Init, none, e),
        }
        sys::close(spec.sync_fd);
    }
    if let Err(e) = sys::unshare(libc::CLONE_NEWCGROUP) {
        fail(report, Stage::Namespaces, none, e);
    }

    // 6. No capabilities, for good, but those the policy keeps for uid 0 inside: lock the secure bits and
    //    empty the bounding set but for those (these need CAP_SETPCAP), set the capability sets to them,
    //    forbid privilege gains, and keep the program away from this process's memory and descriptors (not
    //    dumpable).
    let creds = sys::lock_securebits_and_bound(spec.capabilities)
        .and_then(|()| sys::set_capabilities(spec.capabilities))
        .and_then(|()| sys::no_new_privs())
        .and_then(|()| sys::not_dumpable());
    if let Err(e) = creds {
        fail(report, Stage::Credentials, none, e);
    }

    // 7. Landlock: rules for the paths in here, by their mounted inodes (binds, tmpfs, /dev, /proc, the
    //    root), added to the ruleset the host made; then this process and all it starts are bound.
    if spec.landlock_fd >= 0 {
        for (path, access) in &spec.landlock_rules {
            match landlock::add_path_rule(spec.landlock_fd, path, *access) {
                // A path the sandbox user cannot even reach (a bind beneath a directory it may not search)
                // needs no rights: without a rule, landlock denies it too.
                Ok(()) | Err(libc::EACCES) => {}
                Err(e) => fail(report, Stage::Landlock, none, e),
            }
        }
        if let Err(e) = landlock::restrict_self(spec.landlock_fd) {
            fail(report, Stage::Landlock, none, e);
        }
        sys::close(spec.landlock_fd);
    }

    // 8. Working directory, checked with the sandbox user's permissions.
    if let Err(e) = sys::chdir(&spec.cwd) {
        fail(report, Stage::Cwd, none, e);
    }

    // 9. Become the tiny init: start the program (or serve a session) and supervise it.
    serve::init(spec)
}

/// The program's own process: a session of its own, default signals, then execve.
fn exec_program(spec: &ChildSpec, exec_wr: RawFd) -> ! {
    if let Err((stage, e)) = own_process(spec) {
        exec_failed(exec_wr, stage, e);
    }
    let err = exec_candidates(
        spec.candidates.iter().map(CString::as_c_str),
        &spec.argv,
        &spec.envp,
    );
    exec_failed(exec_wr, Stage::Exec, err)
}

/// Tells the waiting init why a forked program could not be executed, and ends.
fn exec_failed(exec_wr: RawFd, stage: Stage, e: Errno) -> ! {
    let _ = sys::write_all(
        exec_wr,
        &msg::encode([msg::SETUP_FAILED, stage as u32, u32::MAX, e as u32]),
    );
    sys::exit(127)
}

/// What a forked program's process does before execve: a session of its own, default signals, an empty
/// signal mask, its own CPU-time limit (not counted on the init).
fn own_process(spec: &ChildSpec) -> Result<(), (Stage, Errno)> {
    sys::setsid().map_err(|e| (Stage::Init, e))?;
    // A terminal as stdin that is nobody's controlling terminal yet (a pseudo-terminal made for this
    // program, as an OCI runtime's console socket gets) becomes this session's: job control, ^C and SIGHUP
    // work. A terminal that already is one (the caller's own) stays the caller's: the kernel refuses with
    // EPERM, and anything but a terminal with ENOTTY; both are fine. Skipped when the filter would kill it.
    if spec.filter.as_ref().is_none_or(|f| f.may_claim_tty) {
        let _ = sys::claim_terminal(0);
    }
    sys::reset_signal_dispositions();
    // SAFETY: an all-zero sigset is a valid empty set.
    let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    sys::set_sigmask(&empty).map_err(|e| (Stage::Init, e))?;
    for &(resource, soft, hard) in &spec.rlimits {
        if resource == libc::RLIMIT_CPU {
            sys::set_rlimit(resource, soft, hard).map_err(|e| (Stage::Rlimits, e))?;
        }
    }
    Ok(())
}

/// Tries each candidate like execvp (returns only when none could be executed): a missing file moves on, a
/// permission problem is remembered, anything else is the answer.
fn exec_candidates<'a>(
    paths: impl Iterator<Item = &'a CStr>,
    argv: &[*const c_char],
    envp: &[*const c_char],
) -> Errno {
    let mut err = libc::ENOENT;
    for path in paths {
        match sys::execve(path, argv, envp) {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => err = libc::EACCES,
            e => return e,
        }
    }
    err
}

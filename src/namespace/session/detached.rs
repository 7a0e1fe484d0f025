//! Sessions that outlive their creator, host side: the listening socket and status file made for them, the
//! start (`create`), reaching one again (`attach`), telling whether its init still runs, and the last words
//! it left.

use super::*;
/// A session made to outlive this process: what its creator keeps to reach it again.
pub(crate) struct Created {
    pub pid: u32,
    pub start_time: u64,
    pub cgroups: Vec<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub enforced: Enforced,
}

/// Starts a session that outlives this process: its init listens on `socket` (created here, mode 0600),
/// writes its end into `status_file` (created here), holds the locks this process would hold for it, and
/// is left unreaped (it becomes the child of whoever adopts this process's orphans when this process ends).
/// With `wait_start` the launch's program waits for a START request.
pub(crate) fn create(
    launch: &Launch<'_>,
    socket_path: &Path,
    status_file: &Path,
    wait_start: bool,
) -> Result<Created, SetupFailure> {
    let (listener, status, made) = listen_at(socket_path, status_file)?;
    let serve = Serve {
        control: listener.as_raw_fd(),
        listens: true,
        wait_start,
        held: Vec::new(),
        status: status.as_raw_fd(),
        detached: true,
    };
    let launch = Launch {
        serve: Some(&serve),
        ..*launch
    };
    let (mut started, env, cwd) = super::super::spawn_session(&launch)?;
    let start_time = start_time(started.pid as u32).unwrap_or(0);
    // The cgroup stays for the session (removed once it ended, by whoever removes the session).
    let cgroups = started
        .cgroup
        .take()
        .and_then(|c| std::sync::Arc::try_unwrap(c).ok())
        .map(|c| c.keep())
        .unwrap_or_default();
    made.disarm();
    Ok(Created {
        pid: started.pid as u32,
        start_time,
        cgroups,
        env,
        cwd,
        enforced: std::mem::take(&mut started.enforced),
    })
    // Dropping `started` closes this process's descriptors only: no death pipe, no reaping.
}

/// The listening socket of a session that outlives its creator (created at `socket_path`, mode 0600) and its
/// status file (created, 0600); both removed again when the returned guard is dropped undisarmed.
pub(crate) fn listen_at(
    socket_path: &Path,
    status_file: &Path,
) -> Result<(OwnedFd, std::fs::File, Cleanup), SetupFailure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io_err = |what: String, e: std::io::Error| {
        setup_error(Stage::Prepare, e.raw_os_error(), format!("{what}: {e}"))
    };
    let listener = socket::socket(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        socket::SockFlag::SOCK_CLOEXEC | socket::SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| io_err("socket".into(), e.into()))?;
    let addr = socket::UnixAddr::new(socket_path)
        .map_err(|e| io_err(format!("the socket path {socket_path:?}"), e.into()))?;
    socket::bind(listener.as_raw_fd(), &addr).map_err(|e| {
        io_err(
            format!("cannot create the session's socket {socket_path:?}"),
            e.into(),
        )
    })?;
    // From here on, a failure removes what was made.
    let made = Cleanup(vec![socket_path.to_path_buf()]);
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err(format!("chmod {socket_path:?}"), e))?;
    socket::listen(
        &listener,
        socket::Backlog::new(16).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(|e| io_err("listen".into(), e.into()))?;
    let status = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(status_file)
        .map_err(|e| {
            io_err(
                format!("cannot create the session's status file {status_file:?}"),
                e,
            )
        })?;
    let made = Cleanup([made.disarm(), vec![status_file.to_path_buf()]].concat());
    Ok((listener, status, made))
}

/// Paths removed on drop unless disarmed.
pub(crate) struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    pub(crate) fn disarm(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks since boot): with the pid, it
/// names one process for good.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // `rest` starts at field 3.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` has ended and waits to be reaped.
pub(crate) fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A pidfd of the process `pid` if it is still the one that started at `start_time`.
pub(crate) fn pidfd_of(pid: u32, start: u64) -> Option<OwnedFd> {
    let fd = sys::pidfd_open(pid as libc::pid_t).ok()?;
    // SAFETY: pidfd_open just returned this descriptor, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Checked after the pidfd was taken: if the pid was reused before, the start time differs.
    (start_time(pid)? == start).then_some(fd)
}

/// Reaches a session made by [`create`] through its socket.
pub(crate) fn attach(
    socket_path: &Path,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    enforced: Enforced,
    cpu_time: Option<Duration>,
) -> Result<Shared, SetupFailure> {
    let conn = socket::socket(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| setup_error(Stage::Init, Some(e as i32), format!("socket: {e}")))?;
    let addr = socket::UnixAddr::new(socket_path).map_err(|e| {
        setup_error(
            Stage::Init,
            Some(e as i32),
            format!("the socket path {socket_path:?}: {e}"),
        )
    })?;
    socket::connect(conn.as_raw_fd(), &addr).map_err(|e| {
        setup_error(
            Stage::Init,
            Some(e as i32),
            format!("cannot reach the session at {socket_path:?} (has it ended?): connect: {e}"),
        )
    })?;
    Ok(Shared {
        control: conn,
        env,
        cwd,
        enforced,
        cpu_time,
        cgroup: None,
    })
}

/// The last words a session's init wrote into its status file: the denied calls and how it ended.
pub(crate) fn read_status(path: &Path) -> (Vec<Denial>, Option<[u32; 4]>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut denied = Vec::new();
    let mut last = None;
    for chunk in bytes.chunks_exact(msg::LEN) {
        match msg::decode(chunk.try_into().expect("chunks of LEN")) {
            [msg::DENIED, nr, count, _] => denied.push(Denial {
                syscall: super::super::seccomp::syscall_name(nr as i32)
                    .map_or_else(|| format!("#{nr}"), String::from),
                count,
            }),
            words => last = Some(words),
        }
    }
    (denied, last)
}

//! pasta, the user-mode TCP/IP stack of Debian's `passt`, connecting the sandbox's network namespace to the
//! host's network for [`Network::User`](crate::policy::Network::User).
//!
//! Host side, in order, while the sandbox's first process waits for its release (so the program starts with
//! its network up): find pasta → open the sandbox's user and network namespaces → fork the keeper
//! ([`super::keeper`]), which forks pasta's process: it joins the sandbox's user namespace as the sandbox user,
//! with only the capabilities pasta needs there, and executes pasta in the foreground, attached to the network
//! namespace by descriptor → wait until pasta writes its pid (it does once the namespace is configured), or
//! report what it said when it ends instead.
//!
//! pasta is thereby an unprivileged process of the host (the sandbox's host uid) outside the sandbox's pid
//! namespace: the program can neither see nor signal it, and pasta makes itself non-dumpable, so it cannot be
//! traced either. pasta confines itself further: an empty mount namespace, its own IPC and UTS namespaces, a
//! seccomp filter.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::super::idmap::IdMaps;
use super::super::{argv_area, sys};
use super::DNS_FORWARD;
use super::keeper;
use crate::outcome::{SetupFailure, Stage};
use crate::policy::{Policy, Protocol, Publish};

/// Descriptor on which pasta gets the write end of the pipe its pid file line goes to (`--pid`).
pub(super) const READY_FD: RawFd = 3;
/// Descriptor on which pasta gets the sandbox's network namespace (`--netns`).
const NETNS_FD: RawFd = 4;
/// How long pasta may take to configure the namespace (about 50 ms here, much more on a loaded machine).
const READY_LIMIT: Duration = Duration::from_secs(20);
/// The capabilities pasta keeps in the sandbox's user namespace (see [`keeper`]): CAP_NET_BIND_SERVICE (10),
/// to splice published connections to low ports inside; CAP_NET_ADMIN (12), to set up the tap interface,
/// its addresses and routes, and loopback; CAP_SYS_ADMIN (21), to enter the network namespace (setns) and
/// to confine itself in new mount, IPC and UTS namespaces.
const CAPS: u64 = (1 << 10) | (1 << 12) | (1 << 21);

/// A running pasta. Dropping it ends pasta: the keeper sees its stop pipe hang up, kills and reaps pasta,
/// and exits; then the keeper is reaped here.
#[derive(Debug)]
pub(crate) struct Helper {
    /// The program that runs.
    pub program: PathBuf,
    /// Its pid on the host, as pasta wrote it.
    pub pid: libc::pid_t,
    /// The keeper's pid (our child).
    keeper: libc::pid_t,
    /// The write end of the keeper's stop pipe: only this process holds it.
    stop: Option<OwnedFd>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = sys::wait_pid(self.keeper);
    }
}

fn failure(errno: Option<i32>, message: String) -> SetupFailure {
    SetupFailure {
        stage: Stage::Network,
        errno,
        message,
    }
}

/// The pasta program: `$SANDBOX_PASTA`, else `pasta` on the `PATH`.
pub(crate) fn find() -> Result<PathBuf, SetupFailure> {
    find_helper("pasta", "SANDBOX_PASTA")
}

/// A helper program of Debian's passt package: `$VAR`, else `name` on the `PATH`.
pub(super) fn find_helper(name: &str, var: &str) -> Result<PathBuf, SetupFailure> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return if p.is_absolute() && p.is_file() {
            Ok(p)
        } else {
            Err(failure(
                None,
                format!(
                    "{var}={} is not the absolute path of a file: point it at {name} (Debian package passt), \
                     or unset it to use the PATH",
                    p.display()
                ),
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_absolute() && p.is_file())
        .ok_or_else(|| {
            failure(
                Some(libc::ENOENT),
                format!(
                    "user-mode networking (network = \"user\", --net user) needs {name}, and there is no \
                     `{name}` on the PATH: install the Debian package passt (apt-get install passt), or set \
                     {var} to {name}'s path"
                ),
            )
        })
}

/// Why pasta cannot connect a sandbox on this host, as far as can be told without starting one: no pasta,
/// or a `/dev/net/tun` that other users cannot open (pasta opens it as the sandbox's unprivileged host uid).
pub(crate) fn problem() -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = find() {
        return Some(e.message);
    }
    match std::fs::metadata("/dev/net/tun") {
        Err(e) => Some(format!(
            "/dev/net/tun: {e} (pasta needs the tun device: modprobe tun)"
        )),
        Ok(m) if m.permissions().mode() & 0o006 != 0o006 => Some(format!(
            "/dev/net/tun has mode {:04o}: pasta, which runs as the sandbox's unprivileged host uid, cannot \
             open it (Debian's udev rules make it 0666: chmod 0666 /dev/net/tun)",
            m.permissions().mode() & 0o7777
        )),
        Ok(_) => None,
    }
}

/// pasta's arguments after its name: every default that could let the sandbox reach the host, or the host's
/// ports into the sandbox, is turned off explicitly (flags as of passt 2023.03, Debian 12).
pub(crate) fn args(publish: &[Publish]) -> Vec<String> {
    let mut a: Vec<String> = [
        // Stay the keeper's child in the foreground: in the background pasta would move into a session and
        // pid namespace of its own, beyond the keeper's reach when the run ends.
        "--foreground",
        // Only errors. Until it is ready pasta writes them to stderr too, a pipe we read for the failure's
        // message; later ones go to syslog.
        "--quiet",
        // The namespace is configured by pasta itself (address, routes and tap up, over netlink), before the
        // program starts: no DHCP, DHCPv6 or router advertisement server is needed inside.
        "--config-net",
        "--no-dhcp",
        "--no-dhcpv6",
        "--no-ra",
        // No ICMP echo (ping sockets on the host): the mode offers TCP and UDP.
        "--no-icmp",
        // The gateway address is the network's gateway, not a way into the host's loopback (pasta's default
        // maps connections to the gateway's address onto 127.0.0.1 of the host).
        "--no-map-gw",
        // No port bound on the host's loopback appears on the sandbox's loopback (default: `auto`, every one).
        "-T",
        "none",
        "-U",
        "none",
        // The interface inside has a fixed name, not the host's interface's name.
        "--ns-ifname",
        "eth0",
        // The address the sandbox's /etc/resolv.conf names (network::etc_files): UDP port 53 sent there goes
        // to the host's first name server.
        "--dns-forward",
    ]
    .map(String::from)
    .to_vec();
    a.push(DNS_FORWARD.to_string());
    // Host ports into the sandbox: only the published ones.
    a.extend(publish_args(publish));
    a.extend(
        [
            // pasta is in the sandbox's user namespace already (the keeper put it there): it joins no other
            // user namespace and makes none.
            "--netns-only",
            // The namespace comes as a descriptor; there is no file whose removal pasta could watch: the
            // keeper ends it.
            "--no-netns-quit",
        ]
        .map(String::from),
    );
    a.extend([
        "--pid".to_string(),
        format!("/proc/self/fd/{READY_FD}"),
        "--netns".to_string(),
        format!("/proc/self/fd/{NETNS_FD}"),
    ]);
    a
}

/// The host ports into the sandbox, for pasta and passt alike: only the published ones (`-t`/`-u`
/// HOSTPORT:PORT; `none` for a protocol without any: their default is `auto`, every port the sandbox binds,
/// and an unlisted protocol would follow TCP's list).
pub(super) fn publish_args(publish: &[Publish]) -> Vec<String> {
    let mut a = Vec::new();
    for (flag, protocol) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let mut any = false;
        for p in publish.iter().filter(|p| p.protocol == protocol) {
            a.extend([flag.to_string(), format!("{}:{}", p.host_port, p.port)]);
            any = true;
        }
        if !any {
            a.extend([flag.to_string(), "none".to_string()]);
        }
    }
    a
}

/// An O_CLOEXEC pipe: `(read end, write end)`.
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), SetupFailure> {
    let [r, w] = sys::pipe().map_err(|e| {
        failure(
            Some(e),
            format!("pipe2 for pasta: {}", std::io::Error::from_raw_os_error(e)),
        )
    })?;
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

pub(super) fn open(path: &str) -> Result<OwnedFd, SetupFailure> {
    File::open(path).map(OwnedFd::from).map_err(|e| {
        failure(
            e.raw_os_error(),
            format!("opening {path} for the network helper: {e}"),
        )
    })
}

/// Starts pasta for the sandbox whose first process is `pid` (waiting, with its id maps written) and waits
/// until it has configured the sandbox's network namespace.
pub(crate) fn start(
    policy: &Policy,
    pid: libc::pid_t,
    maps: &IdMaps,
) -> Result<Helper, SetupFailure> {
    let program = find()?;
    let c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| failure(None, format!("{program:?} contains a NUL byte")))
    };
    let mut argv_owned = vec![c(b"pasta")?];
    for a in args(&policy.publish) {
        argv_owned.push(c(a.as_bytes())?);
    }
    let userns = open(&format!("/proc/{pid}/ns/user"))?;
    let netns = open(&format!("/proc/{pid}/ns/net"))?;
    let devnull = open("/dev/null")?;
    let (ready_rd, ready_wr) = pipe()?;
    let (errors_rd, errors_wr) = pipe()?;
    let (stop_rd, stop_wr) = pipe()?;
    let (host_uid, host_gid) = maps.host_ids();
    if maps.may_drop_groups() {
        // pasta reopens the ready pipe through /proc/self/fd by its path (`--pid`), as the sandbox's host uid:
        // the pipe must be that uid's, as it is already for an unprivileged caller.
        std::os::unix::fs::fchown(&ready_wr, Some(host_uid), Some(host_gid)).map_err(|e| {
            failure(
                e.raw_os_error(),
                format!("fchown of pasta's ready pipe to {host_uid}:{host_gid}: {e}"),
            )
        })?;
    }
    let spec = keeper::Spec {
        program: c(program.as_os_str().as_bytes())?,
        argv: argv_owned
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect(),
        _argv: argv_owned,
        envp: [std::ptr::null()],
        fds: [
            devnull.as_raw_fd(),
            devnull.as_raw_fd(),
            errors_wr.as_raw_fd(),
            ready_wr.as_raw_fd(),
            netns.as_raw_fd(),
        ],
        userns: userns.as_raw_fd(),
        stop: stop_rd.as_raw_fd(),
        uid: policy.uid,
        gid: policy.gid,
        drop_groups: maps.may_drop_groups(),
        caps: CAPS,
        argv_area: argv_area(),
    };
    // Only the keeper and pasta hold the namespaces and the pipes' other ends once it runs.
    let held = (userns, netns, devnull, ready_wr, errors_wr, stop_rd);
    run_keeper(spec, program, held, ready_rd, errors_rd, stop_wr, |said| {
        explain(said, host_uid)
    })
}

/// Forks the keeper of `spec`, drops `held` (what only the keeper and its helper may hold from then on),
/// and waits until the helper writes its pid on `ready_rd`; when it ends instead, the failure's message is
/// `explain` of what it wrote on `errors_rd`. The helper's name in messages is `spec.argv[0]`.
pub(super) fn run_keeper<H>(
    mut spec: keeper::Spec,
    program: PathBuf,
    held: H,
    ready_rd: OwnedFd,
    errors_rd: OwnedFd,
    stop_wr: OwnedFd,
    explain: impl FnOnce(&[u8]) -> String,
) -> Result<Helper, SetupFailure> {
    let name = spec._argv[0].to_string_lossy().into_owned();
    let keeper = match sys::fork() {
        Ok(0) => keeper::main(&mut spec),
        Ok(pid) => pid,
        Err(e) => {
            return Err(failure(
                Some(e),
                format!(
                    "fork of {name}'s keeper: {}",
                    std::io::Error::from_raw_os_error(e)
                ),
            ));
        }
    };
    // Only the keeper and the helper hold these now: end of file on the ready pipe means the helper ended.
    drop(held);
    let mut helper = Helper {
        program,
        pid: 0,
        keeper,
        stop: Some(stop_wr),
    };
    let mut ready = File::from(ready_rd);
    match read_line(&mut ready, READY_LIMIT) {
        Ok(Some(line)) => match line.trim().parse() {
            Ok(pid) => {
                helper.pid = pid;
                Ok(helper)
            }
            Err(_) => Err(failure(
                None,
                format!("{name} wrote {line:?} where its pid was expected"),
            )),
        },
        Ok(None) => {
            // The helper ended: what it said, once the keeper is gone (then no one holds the pipe's write
            // end).
            drop(helper);
            let mut said = Vec::new();
            let _ = File::from(errors_rd).take(64 << 10).read_to_end(&mut said);
            Err(failure(None, explain(&said)))
        }
        Err(e) => Err(failure(
            e.raw_os_error(),
            format!(
                "{name} did not connect the sandbox's network within {} s ({e}); the machine may be \
                 overloaded",
                READY_LIMIT.as_secs()
            ),
        )),
    }
}

/// What pasta said before it ended, as the message of the setup failure.
fn explain(said: &[u8], host_uid: u32) -> String {
    let said = String::from_utf8_lossy(said);
    let lines = lines(&said);
    let mut m = format!(
        "pasta (Debian package passt) could not connect the sandbox's network namespace: {}",
        if lines.is_empty() {
            "it ended without a message".to_string()
        } else {
            lines.join("; ")
        }
    );
    if lines.iter().any(|l| l.contains("tun")) {
        m.push_str(&format!(
            " (pasta opens /dev/net/tun as the sandbox's host uid {host_uid}: it must be readable and writable \
             by that user, mode 0666 as Debian's udev rules make it)"
        ));
    } else if lines.iter().any(|l| l.contains("interface")) {
        m.push_str(
            " (pasta copies the address and routes of the host's interface with the default route: the host \
             needs one)",
        );
    }
    m
}

/// The lines a helper (pasta or passt) wrote on its stderr, without the noise: both report every failed
/// attempt to reach a syslog daemon there too.
pub(super) fn lines(said: &str) -> Vec<&str> {
    said.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Failed to send"))
        .collect()
}

/// One line from `f`, waiting at most `limit`: `Ok(None)` at end of file without a line.
fn read_line(f: &mut File, limit: Duration) -> std::io::Result<Option<String>> {
    let start = Instant::now();
    let mut line = Vec::new();
    let mut buf = [0u8; 32];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let mut fds = [libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if left.is_zero() || sys::poll(&mut fds, left.as_millis() as i32).map_err(errno)? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        match f.read(&mut buf)? {
            0 => return Ok(None),
            n => line.extend_from_slice(&buf[..n]),
        }
        if line.contains(&b'\n') || line.len() > 64 {
            return Ok(Some(
                OsStr::from_bytes(&line).to_string_lossy().into_owned(),
            ));
        }
    }
}

fn errno(e: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn every_way_to_the_host_is_off() {
        let a = args(&[]);
        for flag in [
            "--foreground",
            "--quiet",
            "--config-net",
            "--no-map-gw",
            "--no-dhcp",
            "--no-dhcpv6",
            "--no-ra",
            "--no-icmp",
            "--netns-only",
            "--no-netns-quit",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} missing: {a:?}");
        }
        for flag in ["-t", "-u", "-T", "-U"] {
            assert_eq!(after(&a, flag), ["none"], "{flag}: {a:?}");
        }
        assert_eq!(after(&a, "--dns-forward"), ["169.254.0.53"]);
        assert_eq!(after(&a, "--pid"), ["/proc/self/fd/3"]);
        assert_eq!(after(&a, "--netns"), ["/proc/self/fd/4"]);
        // The namespace goes last: pasta would take a lone trailing number for a pid.
        assert_eq!(a.last().unwrap(), "/proc/self/fd/4");
    }

    #[test]
    fn only_published_ports_are_forwarded() {
        let a = args(&[
            Publish::tcp(8080, 80),
            Publish::udp(5353, 53),
            Publish::tcp(8443, 443),
        ]);
        assert_eq!(after(&a, "-t"), ["8080:80", "8443:443"]);
        assert_eq!(after(&a, "-u"), ["5353:53"]);
        assert_eq!(after(&a, "-T"), ["none"]);
        assert_eq!(after(&a, "-U"), ["none"]);
        let a = args(&[Publish::tcp(8080, 80)]);
        assert_eq!(after(&a, "-u"), ["none"], "UDP does not follow TCP's list");
    }

    #[test]
    fn pasta_s_errors_are_explained() {
        let m = explain(
            b"Failed to send 47 bytes to syslog\nFailed to open tun socket in namespace\n",
            65534,
        );
        assert!(m.contains("Failed to open tun socket"), "{m}");
        assert!(!m.contains("syslog"), "{m}");
        assert!(m.contains("/dev/net/tun") && m.contains("65534"), "{m}");
        assert!(m.contains("passt"), "{m}");
        let m = explain(b"External interface not usable\n", 1000);
        assert!(m.contains("default route"), "{m}");
        assert!(explain(b"", 1).contains("without a message"));
    }
}

//! passt, the user-mode TCP/IP stack of Debian's `passt` for a VM guest: the same stack as [`super::pasta`]
//! (one program, two front ends), fed with the guest's Ethernet frames over a connected stream socket
//! instead of a tap device in a network namespace. QEMU gets the socket's other end (`-netdev stream` on a
//! descriptor): no path in the file system, no tap device, no privilege on the host.
//!
//! Host side, before the VM starts: find passt → read the host's interface with the default route (its IPv4
//! address, prefix and gateway: what pasta copies into a namespace, so that both backends show the program
//! the same addresses; the guest's agent configures `eth0` with them, [`Link`]) → fork the keeper
//! ([`super::keeper`]), which forks passt's process as the caller in the host's user namespace (a root
//! caller's passt drops to nobody itself, `--runas`) → wait until passt writes its pid (it does once its
//! socket and ports are set up), or report what it said when it ends instead.
//!
//! passt confines itself as pasta does (an empty mount namespace, its own IPC, UTS and user namespaces, a
//! seccomp filter), is outside the VM altogether, and ends with the keeper, or when QEMU closes its socket
//! (`--one-off`).

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::super::argv_area;
use super::DNS_FORWARD;
use super::keeper;
use super::pasta::{self, Helper, READY_FD};
use crate::outcome::{SetupFailure, Stage};
use crate::policy::Publish;

/// Descriptor on which passt gets its end of the guest's socket (`--fd`).
const SOCKET_FD: i32 = 4;
/// Who a root caller's passt runs as (passt refuses to stay root): nobody.
const NOBODY: u32 = 65534;

/// The guest's `eth0`: the address, prefix and gateway of the host's interface with the default route, as
/// passt answers for them (pasta copies the same into a network namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    /// The interface's address (the host's own, which passt translates).
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway: passt answers there (and for every other address off the link).
    pub gateway: Ipv4Addr,
}

fn failure(errno: Option<i32>, message: String) -> SetupFailure {
    SetupFailure {
        stage: Stage::Network,
        errno,
        message,
    }
}

/// The passt program: `$SANDBOX_PASST`, else `passt` on the `PATH`.
pub(crate) fn find() -> Result<PathBuf, SetupFailure> {
    pasta::find_helper("passt", "SANDBOX_PASST")
}

/// The host's first IPv4 default route in `/proc/net/route` text: `(interface, gateway)`.
fn default_route(table: &str) -> Option<(String, Ipv4Addr)> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (dest, gw, flags, mask) = (
            hex(f.get(1)?)?,
            hex(f.get(2)?)?,
            hex(f.get(3)?)?,
            hex(f.get(7)?)?,
        );
        // The kernel writes the addresses in the machine's byte order (little-endian here).
        (dest == 0 && mask == 0 && flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0)
            .then(|| (f[0].to_string(), Ipv4Addr::from(gw.to_ne_bytes())))
    })
}

/// The host's interface with the default route, as passt would pick it.
pub(crate) fn host_link() -> Result<Link, SetupFailure> {
    let table = std::fs::read_to_string("/proc/net/route").map_err(|e| {
        failure(
            e.raw_os_error(),
            format!("reading /proc/net/route for the host's default route: {e}"),
        )
    })?;
    let no_route = || {
        failure(
            None,
            "user-mode networking for a VM (network = \"user\") needs an IPv4 default route on the host: passt \
             gives the guest the address and gateway of the interface that has it, and there is none (see \
             `ip -4 route show default`)"
                .into(),
        )
    };
    let (interface, gateway) = default_route(&table).ok_or_else(no_route)?;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| {
        failure(
            Some(e as i32),
            format!("getifaddrs for the address of {interface}: {e}"),
        )
    })?;
    for a in addrs.filter(|a| a.interface_name == interface) {
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
        ) else {
            continue;
        };
        return Ok(Link {
            address: addr.ip(),
            prefix: u32::from(mask.ip()).leading_ones() as u8,
            gateway,
        });
    }
    Err(failure(
        None,
        format!(
            "the host's default route goes through {interface}, which has no IPv4 address: passt has none to \
             give the guest"
        ),
    ))
}

/// passt's arguments after its name: the link given explicitly (the guest is configured with it), and every
/// default that could let the guest reach the host, or the host's ports into the guest, off (flags as of
/// passt 2023.03, Debian 12).
pub(crate) fn args(link: &Link, publish: &[Publish], root: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        // The keeper's child in the foreground; only errors, on stderr until it is ready.
        "--foreground",
        "--quiet",
        // The guest has IPv4 only, configured by our agent: no DHCP, NDP, DHCPv6 or router advertisements.
        "--ipv4-only",
        "--no-dhcp",
        "--no-ndp",
        "--no-dhcpv6",
        "--no-ra",
        // TCP and UDP, as pasta offers a namespace.
        "--no-icmp",
        // The gateway address is the network's gateway, never the host's loopback.
        "--no-map-gw",
        // Ends when QEMU closes the socket (the VM ended), besides the keeper's kill.
        "--one-off",
        "--dns-forward",
    ]
    .map(String::from)
    .to_vec();
    a.push(DNS_FORWARD.to_string());
    a.extend([
        "--address".into(),
        link.address.to_string(),
        "--netmask".into(),
        link.prefix.to_string(),
        "--gateway".into(),
        link.gateway.to_string(),
    ]);
    a.extend(pasta::publish_args(publish));
    if root {
        a.extend(["--runas".into(), format!("{NOBODY}:{NOBODY}")]);
    }
    a.extend([
        "--pid".to_string(),
        format!("/proc/self/fd/{READY_FD}"),
        "--fd".to_string(),
        SOCKET_FD.to_string(),
    ]);
    a
}

/// Starts passt on `socket` (one end of a connected stream socket pair; QEMU gets the other) for a guest on
/// `link`, publishing `publish`, and waits until it is ready.
pub(crate) fn start(
    link: &Link,
    publish: &[Publish],
    socket: OwnedFd,
) -> Result<Helper, SetupFailure> {
    let program = find()?;
    let c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| failure(None, format!("{program:?} contains a NUL byte")))
    };
    let root = nix::unistd::geteuid().is_root();
    let mut argv_owned = vec![c(b"passt")?];
    for a in args(link, publish, root) {
        argv_owned.push(c(a.as_bytes())?);
    }
    let devnull = pasta::open("/dev/null")?;
    let (ready_rd, ready_wr) = pasta::pipe()?;
    let (errors_rd, errors_wr) = pasta::pipe()?;
    let (stop_rd, stop_wr) = pasta::pipe()?;
    if root {
        // passt may write its pid after it dropped to nobody, reopening the pipe through /proc/self/fd.
        std::os::unix::fs::fchown(&ready_wr, Some(NOBODY), Some(NOBODY)).map_err(|e| {
            failure(
                e.raw_os_error(),
                format!("fchown of passt's ready pipe to {NOBODY}:{NOBODY}: {e}"),
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
            socket.as_raw_fd(),
        ],
        userns: -1,
        stop: stop_rd.as_raw_fd(),
        uid: 0,
        gid: 0,
        drop_groups: false,
        caps: 0,
        argv_area: argv_area(),
    };
    let held = (socket, devnull, ready_wr, errors_wr, stop_rd);
    pasta::run_keeper(spec, program, held, ready_rd, errors_rd, stop_wr, |said| {
        let said = String::from_utf8_lossy(said);
        let lines = pasta::lines(&said);
        format!(
            "passt (Debian package passt) could not start the VM's user-mode network: {}",
            if lines.is_empty() {
                "it ended without a message".to_string()
            } else {
                lines.join("; ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_is_read_in_the_kernels_byte_order() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     sbx0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     sbx0\t00000000\tFE004D0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            default_route(table),
            Some(("sbx0".to_string(), Ipv4Addr::new(10, 77, 0, 254)))
        );
        // A default route without a gateway (a point-to-point link) is not one passt can use.
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n";
        assert_eq!(default_route(table), None);
        assert_eq!(default_route(""), None);
    }

    #[test]
    fn every_way_to_the_host_is_off_and_the_link_is_explicit() {
        let link = Link {
            address: Ipv4Addr::new(10, 77, 0, 1),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 77, 0, 254),
        };
        let a = args(&link, &[], true);
        for flag in [
            "--no-map-gw",
            "--no-dhcp",
            "--ipv4-only",
            "--one-off",
            "--foreground",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} missing: {a:?}");
        }
        let after = |flag: &str| {
            a.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(after("-t"), ["none"]);
        assert_eq!(after("-u"), ["none"]);
        assert_eq!(after("--address"), ["10.77.0.1"]);
        assert_eq!(after("--netmask"), ["24"]);
        assert_eq!(after("--gateway"), ["10.77.0.254"]);
        assert_eq!(after("--runas"), ["65534:65534"]);
        assert_eq!(after("--fd"), ["4"]);
        assert!(!args(&link, &[], false).iter().any(|x| x == "--runas"));
    }
}

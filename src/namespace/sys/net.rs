//! An IPv4 address and a default route for an interface, by the classic socket ioctls: what our guest's
//! agent gives the VM's `eth0` for `network = "user"` (no netlink library for two settings).

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use libc::c_long;

use super::{SysResult, check, close};

/// The kernel's `struct rtentry` (`<linux/route.h>`), which the libc crate offers for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `addr` as a `struct sockaddr` (AF_INET, port 0).
fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the kernel reads it as sockaddr_in
    // by its family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// An AF_INET datagram socket for the ioctls, closed by the caller.
fn inet_socket() -> SysResult<RawFd> {
    // SAFETY: plain syscall with integer arguments.
    check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as c_long,
    )
    .map(|fd| fd as RawFd)
}

/// Gives the interface `name` the IPv4 address `addr` with a `prefix`-bit netmask (SIOCSIFADDR,
/// SIOCSIFNETMASK); the step that failed is named with its errno.
pub fn interface_ipv4(name: &CStr, addr: Ipv4Addr, prefix: u8) -> Result<(), (&'static str, i32)> {
    let sock = inet_socket().map_err(|e| ("socket(AF_INET)", e))?;
    let mut req = ifreq(name);
    let mask = Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    );
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    // SAFETY: `req` is a valid ifreq with an AF_INET address, for an ioctl on an open socket.
    let result = check(unsafe { libc::ioctl(sock, libc::SIOCSIFADDR, &req) } as c_long)
        .map_err(|e| ("ioctl(SIOCSIFADDR)", e))
        .and_then(|_| {
            req.ifr_ifru.ifru_netmask = sockaddr(mask);
            // SAFETY: as above, with the netmask.
            check(unsafe { libc::ioctl(sock, libc::SIOCSIFNETMASK, &req) } as c_long)
                .map_err(|e| ("ioctl(SIOCSIFNETMASK)", e))
        });
    close(sock);
    result.map(drop)
}

/// An ifreq naming `name`.
fn ifreq(name: &CStr) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.to_bytes().iter().take(libc::IFNAMSIZ - 1))
    {
        *d = *s as libc::c_char;
    }
    req
}

/// Adds the IPv4 default route through `gateway` (SIOCADDRT).
pub fn default_route(gateway: Ipv4Addr) -> SysResult<()> {
    let sock = inet_socket()?;
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(gateway),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `route` is a valid struct rtentry (no device name: the kernel picks the interface on the
    // gateway's network), for an ioctl on an open socket.
    let result = check(unsafe { libc::ioctl(sock, libc::SIOCADDRT, &route) } as c_long);
    close(sock);
    result.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_entry_has_the_kernels_layout() {
        // x86_64 `struct rtentry`: 120 bytes, rt_flags at 56, rt_dev at 88.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_flags), 56);
        assert_eq!(std::mem::offset_of!(RtEntry, rt_dev), 88);
    }
}

//! Privileges: user and group ids, secure bits, capabilities, dumpability, no-new-privs and resource limits.

use libc::{c_int, c_long, c_ulong};

use super::{SysResult, check};

const SECBIT_NOROOT: c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: c_ulong = 1 << 7;

/// `setrlimit(2)`.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> SysResult<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &lim) } as c_long).map(drop)
}

/// Becomes `uid`/`gid` (real, effective and saved); when `drop_groups`, the supplementary groups are first
/// replaced by `groups` (none: dropped).
///
/// Raw system calls on purpose: glibc's wrappers broadcast id changes to every thread it believes exists,
/// and in a child cloned from a multi-threaded process those threads do not exist, so they would wait forever.
pub fn set_ids(uid: u32, gid: u32, drop_groups: bool, groups: &[libc::gid_t]) -> SysResult<()> {
    if drop_groups {
        // SAFETY: `groups` holds `groups.len()` gids (an empty slice's pointer is not read).
        check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    }
    // Where this process is the user namespace's uid 0 (its creator's id is mapped to 0 inside: an
    // unprivileged caller with subordinate ids, or a guest's run on the VMM's shares), leaving uid 0 would
    // clear the capabilities the view still needs: keep the permitted set, then raise the effective one again.
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } as c_long)?;
    // SAFETY: plain syscalls with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } as c_long)?;
    raise_permitted()
}

/// Makes the effective capability set the permitted one.
fn raise_permitted() -> SysResult<()> {
    let mut data = [CapData::default(); 2];
    // SAFETY: a version 3 header and two data words, as capget(2) expects.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut CapHeader::current() as *mut CapHeader,
            data.as_mut_ptr(),
        )
    })?;
    capset(data.map(|d| CapData {
        effective: d.permitted,
        ..d
    }))
}

/// Drops every supplementary group (`setgroups(0)`): for a root caller before it joins a user namespace.
pub fn clear_groups() -> SysResult<()> {
    // SAFETY: an empty group list with a NULL pointer is valid.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) })
        .map(drop)
}

/// Keeps exactly the capabilities in `mask` (bit N: capability N) across the next `execve` and no others:
/// locks the "no root privileges" secure bits (uid 0 gains nothing at exec), drops every other capability
/// from the bounding set, makes `mask` the effective, permitted and inheritable sets, and raises it in the
/// ambient set (which execve keeps for a program without file capabilities). Needs CAP_SETPCAP and the caps
/// of `mask` in the current user namespace.
pub fn keep_only_capabilities(mask: u64) -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT | SECBIT_NOROOT_LOCKED,
            0,
            0,
            0,
        )
    } as c_long)?;
    for cap in 0..64u32 {
        if mask & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) };
        // EINVAL marks a capability this kernel does not know.
        match check(ret as c_long) {
            Ok(_) | Err(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    capset([mask as u32, (mask >> 32) as u32].map(|word| CapData {
        effective: word,
        permitted: word,
        inheritable: word,
    }))?;
    for cap in (0..64u32).filter(|c| mask & (1 << c) != 0) {
        // SAFETY: prctl with integer arguments.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                cap as c_ulong,
                0,
                0,
            )
        } as c_long)?;
    }
    Ok(())
}

/// Locks the secure bits and empties the bounding set but for `keep` (a capability mask). Needs CAP_SETPCAP.
///
/// With nothing to keep, the "no root privileges" bits are set and locked, so no later execve can gain
/// capabilities from uid 0 or set-user-ID files. With capabilities to keep, uid 0 keeps the usual semantics,
/// locked: an execve by uid 0 gets the kept set (no more: the bounding set and `no_new_privs` cap it), and a
/// switch away from uid 0 drops every capability. Ambient capabilities are never allowed.
pub fn lock_securebits_and_bound(keep: u64) -> SysResult<()> {
    let root_bits = if keep == 0 {
        SECBIT_NOROOT | SECBIT_NO_SETUID_FIXUP
    } else {
        0
    };
    let bits = root_bits
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } as c_long)?;
    for cap in 0..64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL marks the first capability this kernel does not know.
        if let Err(e) = check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } as c_long)
        {
            if e == libc::EINVAL {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

impl CapHeader {
    /// This thread, `_LINUX_CAPABILITY_VERSION_3` (two data words).
    fn current() -> CapHeader {
        CapHeader {
            version: 0x2008_0522,
            pid: 0,
        }
    }
}

/// `capset(2)` of this thread.
fn capset(data: [CapData; 2]) -> SysResult<()> {
    // SAFETY: a version 3 header and two data words, as capset(2) expects.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut CapHeader::current() as *mut CapHeader,
            data.as_ptr(),
        )
    })
    .map(drop)
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the effective and permitted capability sets to `keep` (a mask) and clears the inheritable and ambient
/// ones.
pub fn set_capabilities(keep: u64) -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } as c_long)?;
    let word = |i: u32| (keep >> (32 * i)) as u32;
    capset([0, 1].map(|i| CapData {
        effective: word(i),
        permitted: word(i),
        inheritable: 0,
    }))
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no ptrace, no /proc/PID access by other processes of the same user.
pub fn not_dumpable() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } as c_long).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS)`.
pub fn no_new_privs() -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as c_long).map(drop)
}

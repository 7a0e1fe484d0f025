//! The agent's own filesystem work as PID 1: leave the initramfs root, mount the kernel filesystems, the
//! shares and the links of the run specification. Guest-only: nothing here runs on a host.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use super::GuestError;
use crate::protocol::{Link, Share, ShareFs};

/// The directory the agent binds the initramfs root on before moving it to `/`.
const REROOT: &str = "/mnt";

fn mount_error(
    fstype: &str,
    source: &str,
    target: &Path,
    options: &str,
    errno: Errno,
) -> GuestError {
    let hint = match (errno, fstype) {
        (Errno::ENODEV, _) => {
            "; the guest kernel lacks this filesystem (see kernel-config/guest.config)"
        }
        (Errno::ENOENT, "9p" | "virtiofs") => {
            "; no device has this tag: check the VMM's share devices (mount_tag / tag)"
        }
        _ => "",
    };
    GuestError::Mount {
        fstype: fstype.into(),
        device: source.into(),
        target: target.into(),
        options: options.into(),
        errno,
        hint,
    }
}

fn do_mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    options: &str,
) -> Result<(), GuestError> {
    let data = (!options.is_empty()).then_some(options);
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| mount_error(fstype, source, target, options, e))
}

fn mkdir_p(path: &Path) -> Result<(), GuestError> {
    std::fs::create_dir_all(path).map_err(|source| GuestError::Create {
        path: path.into(),
        source,
    })
}

/// Makes `/` a mount with a parent, so `pivot_root(2)` works in the sandboxes built later.
///
/// The initramfs is the kernel's root mount, which has no parent, and pivot_root refuses to move such a
/// root away (EINVAL). Bind it on a directory of itself, move that bind over `/`, and chroot into it, as
/// `switch_root` does with a real root.
pub(crate) fn leave_rootfs() -> Result<(), GuestError> {
    let step = |step: &'static str| move |errno| GuestError::LeaveRootfs { step, errno };
    mkdir_p(Path::new(REROOT))?;
    mount(
        Some("/"),
        REROOT,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("mount --rbind / /mnt"))?;
    nix::unistd::chdir(REROOT).map_err(step("chdir /mnt"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("mount --move . /"))?;
    nix::unistd::chroot(".").map_err(step("chroot ."))?;
    nix::unistd::chdir("/").map_err(step("chdir /"))?;
    Ok(())
}

/// Mounts proc, sysfs, devtmpfs (with devpts and shm), cgroup2 with the cpu, memory and pids controllers
/// enabled for child groups, and tmpfs on `/tmp` and `/run`. Returns warnings: what is missing but not fatal.
pub(crate) fn mount_system() -> Result<Vec<String>, GuestError> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let kernel_fs = nosuid_nodev | MsFlags::MS_NOEXEC;
    let table: &[(&str, &str, MsFlags, &str)] = &[
        ("/proc", "proc", kernel_fs, ""),
        ("/sys", "sysfs", kernel_fs, ""),
        ("/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
        (
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        ("/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),
        ("/sys/fs/cgroup", "cgroup2", kernel_fs, "nsdelegate"),
        ("/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
        ("/run", "tmpfs", nosuid_nodev, "mode=0755"),
    ];
    let mut warnings = Vec::new();
    let mut cgroups = true;
    for &(target, fstype, flags, options) in table {
        let target = Path::new(target);
        let mounted =
            mkdir_p(target).and_then(|()| do_mount(fstype, target, fstype, flags, options));
        match mounted {
            // Without cgroups the run goes on: the sandbox reports its cgroup limits as not enforced, or
            // fails the run itself when the policy requires them.
            Err(e) if fstype == "cgroup2" => {
                warnings.push(format!("no cgroup2 in the guest, so no cgroup limits: {e}"));
                cgroups = false;
                continue;
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        if fstype == "devtmpfs" {
            dev_links();
        }
    }
    if cgroups {
        warnings.extend(enable_controllers());
    }
    // Guest RAM is the memory limit plus a margin: with the kernel's default heuristic a large allocation
    // would fail at once (ENOMEM) where a host lets it through until the cgroup's OOM killer stops it. Always
    // overcommit, so the memory limit behaves the same on both backends.
    if let Err(e) = std::fs::write("/proc/sys/vm/overcommit_memory", "1") {
        warnings.push(format!("cannot set vm.overcommit_memory: {e}"));
    }
    Ok(warnings)
}

/// The /dev entries udev would add: /dev/fd and the standard stream links.
fn dev_links() {
    for (path, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, path);
    }
}

/// Enables cpu, memory and pids for the root cgroup's children, one controller at a time so one the kernel
/// lacks does not stop the others.
fn enable_controllers() -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut warnings = Vec::new();
    for c in ["cpu", "memory", "pids"] {
        if !available.split_whitespace().any(|a| a == c) {
            warnings.push(format!(
                "cgroup controller {c} is not available in the guest kernel (available: {:?})",
                available.trim()
            ));
            continue;
        }
        if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            warnings.push(format!("cannot enable cgroup controller {c}: {e}"));
        }
    }
    warnings
}

/// Mounts each share at its guest path (created when missing; never through a symbolic link), nosuid and
/// nodev, read-only when asked.
pub(crate) fn mount_shares(shares: &[Share]) -> Result<(), GuestError> {
    for s in shares {
        mkdir_p(&s.guest_path)?;
        let real = std::fs::canonicalize(&s.guest_path).map_err(|source| GuestError::Create {
            path: s.guest_path.clone(),
            source,
        })?;
        if real != s.guest_path {
            return Err(GuestError::Symlinked {
                path: s.guest_path.clone(),
                real,
            });
        }
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if s.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        let fstype = s.fs.fstype();
        // A read-only 9p share is mounted with `cache=mmap`: file data goes through the page cache (with
        // readahead) while a file is in use, but dentries and inodes are still dropped after each use, so every
        // lookup asks the host again and a later run sees the host's files as they are then, as `none` does.
        // A warm run of `/bin/true` on a pool: ~150 ms against ~200-230 ms uncached (BENCHMARKS.md,
        // session 15). `loose` (~70 ms) would keep dentries and pages with no revalidation: stale host files
        // in a long-lived pooled VM, so not used. Writable shares stay uncached (no write-back to lose).
        let options = match s.fs {
            ShareFs::NineP if s.readonly => "trans=virtio,version=9p2000.L,cache=mmap",
            ShareFs::NineP => "trans=virtio,version=9p2000.L",
            ShareFs::Virtiofs => "",
        };
        do_mount(&s.tag, &s.guest_path, fstype, flags, options)?;
    }
    Ok(())
}

/// Creates the links of the specification; an existing identical link is fine.
pub(crate) fn make_links(links: &[Link]) -> Result<(), GuestError> {
    for l in links {
        if let Some(parent) = l.path.parent() {
            mkdir_p(parent)?;
        }
        if std::fs::read_link(&l.path).ok().as_deref() == Some(l.target.as_path()) {
            continue;
        }
        std::os::unix::fs::symlink(&l.target, &l.path).map_err(|source| GuestError::Create {
            path: l.path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Makes sure descriptors 0, 1 and 2 are open: the kernel opens `/dev/console` for PID 1 only when the
/// initramfs has it. Missing ones are opened on `/dev/null` (stdin) or the console (devtmpfs must be mounted).
pub(crate) fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the flags of a descriptor number; an unopened number gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let path = if fd == 0 { "/dev/null" } else { "/dev/console" };
        let Ok(f) = std::fs::OpenOptions::new()
            .read(fd == 0)
            .write(fd != 0)
            .open(path)
        else {
            continue;
        };
        if std::os::fd::AsRawFd::as_raw_fd(&f) == fd {
            // It landed on the number it is meant for: keep it open.
            let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
            continue;
        }
        let _ = match fd {
            0 => nix::unistd::dup2_stdin(&f),
            1 => nix::unistd::dup2_stdout(&f),
            _ => nix::unistd::dup2_stderr(&f),
        };
    }
}

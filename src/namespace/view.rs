//! The default filesystem view: the read-only host system, a minimal `/dev`, and a `/proc` with the
//! kernel's sensitive files masked. Planner steps like the rest of [`super::plan`].

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::plan::{Cover, Inside, Kind, Op, PlanError, Planner, cstr, lit};
use super::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::outcome::Stage;
use crate::policy::{SYSTEM_ETC, SYSTEM_TOP};

/// `/etc` files up to this size are copied into the sandbox rather than bound.
const COPY_LIMIT: u64 = 256 * 1024;

impl Planner {
    /// The read-only host system: top-level entries and the `/etc` files programs need, except those in
    /// `written` (`(name below /etc, contents)`: files the policy's network mode writes itself), which are
    /// written instead, whether or not the host has them.
    pub(super) fn system(&mut self, written: &[(&str, Vec<u8>)]) -> Result<(), PlanError> {
        for name in SYSTEM_TOP {
            let host = Path::new("/").join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host).map_err(|source| PlanError::Source {
                    path: host.clone(),
                    source,
                })?;
                self.symlink(&target, &host)?;
                self.links.push((host, target));
            } else if meta.is_dir() {
                // Looked at just now: the bind's link check need not look again.
                self.looked_up.insert(host.clone());
                self.bind(&host, &host, false)?;
            }
        }
        for name in SYSTEM_ETC {
            if written.iter().any(|(w, _)| w == name) {
                continue;
            }
            let host = Path::new("/etc").join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                // Keep a symlink when it points into the system view; else show what it points to.
                match std::fs::canonicalize(&host) {
                    Ok(real)
                        if SYSTEM_TOP
                            .iter()
                            .any(|t| real.starts_with(Path::new("/").join(t))) =>
                    {
                        let target =
                            std::fs::read_link(&host).map_err(|source| PlanError::Source {
                                path: host.clone(),
                                source,
                            })?;
                        self.symlink(&target, &host)?;
                    }
                    Ok(real)
                        if real.is_file()
                            && std::fs::metadata(&real).is_ok_and(|m| m.len() <= COPY_LIMIT) =>
                    {
                        self.copy_file(&real, &host)?
                    }
                    Ok(real) => self.bind(&real, &host, false)?,
                    Err(_) => continue, // dangling on the host too
                }
            } else if meta.is_file() && meta.len() <= COPY_LIMIT {
                self.copy_file(&host, &host)?;
            } else {
                if meta.is_dir() {
                    self.looked_up.insert(host.clone());
                }
                self.bind(&host, &host, false)?;
            }
        }
        for (name, contents) in written {
            self.write_file(&Path::new("/etc").join(name), contents.clone())?;
        }
        Ok(())
    }

    /// Shows the small host file `src` at `dst` as a copy in the new root's tmpfs: cheap system calls in the
    /// child instead of a bind mount and a remount (a snapshot taken at spawn time). The host opens it now,
    /// with the caller's rights; the kernel copies it in the child.
    fn copy_file(&mut self, src: &Path, dst: &Path) -> Result<(), PlanError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src)
            .map_err(|source| PlanError::Source {
                path: src.into(),
                source,
            })?;
        // Checked on what was opened: a FIFO or device put in the file's place is not read from.
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        if !regular {
            return Err(PlanError::Source {
                path: src.into(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let fd = std::os::fd::OwnedFd::from(file);
        let parent = dst.parent().unwrap_or(Path::new("/"));
        self.mountpoint(parent, Kind::Dir)?;
        self.read_inside(parent)?;
        self.push(
            Stage::Mounts,
            Op::CopyFile {
                path: cstr(Self::new_path(dst))?,
                fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                limit: COPY_LIMIT,
            },
        );
        self.copies.push(fd);
        Ok(())
    }

    /// `dir`, made by the view, is readable under landlock.
    fn read_inside(&mut self, dir: &Path) -> Result<(), PlanError> {
        if !self
            .inside
            .iter()
            .any(|(p, _)| p.as_bytes() == dir.as_os_str().as_bytes())
        {
            self.inside.push((cstr(dir)?, Inside::Read));
        }
        Ok(())
    }

    /// Shows a file with `contents` at `dst`, read-only (the new root is frozen after the view is built).
    fn write_file(&mut self, dst: &Path, contents: Vec<u8>) -> Result<(), PlanError> {
        let parent = dst.parent().unwrap_or(Path::new("/"));
        self.mountpoint(parent, Kind::Dir)?;
        self.read_inside(parent)?;
        self.push(
            Stage::Mounts,
            Op::WriteFile {
                path: cstr(Self::new_path(dst))?,
                contents,
            },
        );
        Ok(())
    }

    /// A minimal `/dev`: the harmless character devices, a private devpts, shm, and the usual links.
    pub(super) fn dev(&mut self, extra: &[std::path::PathBuf]) -> Result<(), PlanError> {
        let dev = Path::new("/dev");
        self.tmpfs(
            dev,
            "mode=0755,size=65536".into(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Inside::Dev,
        )?;
        use std::os::unix::fs::FileTypeExt;
        const OURS: [&str; 10] = [
            "ptmx", "pts", "shm", "fd", "stdin", "stdout", "stderr", "null", "zero", "full",
        ];
        for d in extra {
            if d.parent() != Some(dev) || OURS.iter().any(|o| d.ends_with(o)) {
                return Err(PlanError::NotADevice(d.clone()));
            }
            let is_char = std::fs::metadata(d).is_ok_and(|m| m.file_type().is_char_device());
            if !is_char {
                return Err(PlanError::NotADevice(d.clone()));
            }
        }
        let standard = ["null", "zero", "full", "random", "urandom", "tty"].map(|n| dev.join(n));
        let extra = extra.iter().filter(|d| !standard.contains(d)).cloned();
        for node in standard.clone().into_iter().chain(extra) {
            if std::fs::metadata(&node).is_err() {
                continue;
            }
            self.mountpoint(&node, Kind::File)?;
            let target = cstr(Self::new_path(&node))?;
            self.mount(
                Some(cstr(Self::host(&node))?),
                target.clone(),
                None,
                libc::MS_BIND,
                None,
            );
            // No remount: a device node cannot be executed or be set-user-ID, and the bind keeps the
            // flags of the host's /dev mount.
            self.covers.push((node, Cover::Fixed));
        }
        let pts = dev.join("pts");
        self.mountpoint(&pts, Kind::Dir)?;
        self.mount(
            Some(lit("devpts")),
            cstr(Self::new_path(&pts))?,
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620".into()),
        );
        self.covers.push((pts, Cover::Fixed));
        self.symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
        // shm: a bounded tmpfs like /tmp, mounted by `plan`.
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            self.symlink(Path::new(target), &dev.join(name))?;
        }
        Ok(())
    }

    /// A proc for the new pid namespace, with the kernel's sensitive files masked and `/proc/sys` read-only.
    pub(super) fn proc(&mut self) -> Result<(), PlanError> {
        let proc = Path::new("/proc");
        self.mountpoint(proc, Kind::Dir)?;
        let target = cstr(Self::new_path(proc))?;
        self.mount(
            Some(lit("proc")),
            target,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        );
        self.covers.push((proc.into(), Cover::Fixed));
        self.inside.push((lit("/proc"), Inside::Proc));
        // Files that expose kernel memory or host-wide state: hidden behind /dev/null.
        for name in [
            "kcore",
            "keys",
            "timer_list",
            "sched_debug",
            "latency_stats",
            "sysrq-trigger",
        ] {
            let host = proc.join(name);
            if std::fs::symlink_metadata(&host).is_err() {
                continue;
            }
            let target = cstr(Self::new_path(&host))?;
            self.mount(
                Some(cstr(Self::host(Path::new("/dev/null")))?),
                target.clone(),
                None,
                libc::MS_BIND,
                None,
            );
            // Read-only would add nothing: writes to /dev/null are discarded.
        }
        // Directories of hardware and host state: hidden behind an empty read-only tmpfs.
        for name in ["acpi", "scsi", "asound"] {
            let host = proc.join(name);
            if !host.is_dir() {
                continue;
            }
            let target = cstr(Self::new_path(&host))?;
            self.mount(
                Some(lit("tmpfs")),
                target.clone(),
                Some("tmpfs"),
                libc::MS_RDONLY,
                Some("size=0".into()),
            );
        }
        // Kernel tunables and other host-wide knobs: visible but read-only.
        for name in ["sys", "bus", "fs", "irq"] {
            let host = proc.join(name);
            if !host.is_dir() {
                continue;
            }
            let target = cstr(Self::new_path(&host))?;
            self.mount(
                Some(target.clone()),
                target.clone(),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            );
            self.set_attr(
                target,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                true,
            );
        }
        Ok(())
    }
}

//! The kernel's floor for a spawn: the same namespaces and the same mounts as the library's default view,
//! made by the fewest system calls, with none of the library's own work (no planning, no seccomp, no
//! landlock, no PID 1 of ours, no supervision).
//!
//! The parent clones a child into new user, mount, PID, network, IPC, UTS and cgroup namespaces, writes its
//! id maps, and lets it go; the child replays a fixed list of steps (mounts, directories, links, the copied
//! `/etc` files) prepared before the clone, then executes `/bin/true` as PID 1 of its namespace. The list is
//! the default policy's view on this machine, as `strace -f sandbox run -- /bin/true` shows it (Debian 12):
//! a tmpfs root with `/usr` read-only and the merged-`/usr` links, `/etc` made of copied files and read-only
//! directory binds, a fresh `/dev` with six device binds and devpts, `/proc` with its masks and read-only
//! parts, `/dev/shm` and `/tmp`, the old root detached, the root and `/dev` read-only, the hostname, and
//! `lo` up. Entries missing on another host are left out.
//!
//! `case_layers` adds the kernel's part of seccomp and landlock in the program's process
//! ([`Floor::with_layers`]).
//!
//! `step_costs` runs it with a clock read after each step (in shared memory) and reports what each kind
//! of step costs: a profile of the kernel's part of a run.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

mod layers;
use layers::Layers;

const RO: u64 = libc::MOUNT_ATTR_RDONLY;
const NOSUID: u64 = libc::MOUNT_ATTR_NOSUID;
const NODEV: u64 = libc::MOUNT_ATTR_NODEV;
const NOEXEC: u64 = libc::MOUNT_ATTR_NOEXEC;

/// The `/etc` directories the default view binds read-only.
const ETC_DIRS: &[&str] = &[
    "alternatives",
    "ca-certificates",
    "ld.so.conf.d",
    "python3",
    "python3.11",
    "ssl",
];
/// The `/etc` files the default view copies.
const ETC_FILES: &[&str] = &[
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "group",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "locale.alias",
    "mime.types",
    "nsswitch.conf",
    "passwd",
    "protocols",
    "services",
    "timezone",
];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

enum Step {
    Mount {
        src: Option<CString>,
        dst: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    SetAttr {
        path: CString,
        set: u64,
        recursive: bool,
    },
    Mkdir(CString),
    Symlink(CString, CString),
    Write(CString, Vec<u8>),
    PivotRoot(CString, CString),
    Chdir(CString),
    Detach(CString),
    Hostname,
    /// `lo` up in the new network namespace, as the library and bwrap do (one socket, `SIOCSIFFLAGS`).
    LoopbackUp,
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::Mount { flags, .. } if flags & libc::MS_BIND != 0 => "mount (bind)",
            Step::Mount { .. } => "mount (new)",
            Step::SetAttr { .. } => "mount_setattr",
            Step::Mkdir(_) => "mkdir",
            Step::Symlink(..) => "symlink",
            Step::Write(..) => "create+write file",
            Step::PivotRoot(..) => "pivot_root",
            Step::Chdir(_) => "chdir",
            Step::Detach(_) => "umount2 (detach old root)",
            Step::Hostname => "sethostname",
            Step::LoopbackUp => "loopback up",
        }
    }
}

fn c(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).expect("no NUL in a fixed path")
}

/// The steps of the default view.
pub struct Floor {
    steps: Vec<Step>,
    exe: CString,
    /// Like the library: the namespace's PID 1 forks the program and waits for it, instead of becoming it.
    init: bool,
    /// The kernel's part of the library's layers, applied by the program's process before its exec.
    layers: Option<Layers>,
    /// PID 1 shares this process's memory (`CLONE_VM`, a stack of its own) and starts the program with
    /// `CLONE_VM | CLONE_VFORK`, instead of fork-like clones: no page tables copied, none torn down, no
    /// copy-on-write faults on either side. What an init that is not a fork of its caller could save.
    shared_memory: bool,
}

/// The stack of each of the two shared-memory clones (PID 1, then the program until its exec).
const STACK: usize = 256 << 10;

/// What the shared-memory PID 1 gets (on the caller's stack, which outlives it: the caller waits).
struct ChildArgs<'a> {
    floor: &'a Floor,
    ready: i32,
    writer: i32,
    clock: Option<&'a Shared>,
    /// Where the program's stack ends (it grows down), in the same mapping as PID 1's.
    program_stack: *mut libc::c_void,
}

extern "C" fn shared_init(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the caller passed to clone and keeps alive until this process ended.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: the child of a clone; it makes only system calls on data made before it.
    unsafe { a.floor.child(a.ready, a.writer, a.clock, a.program_stack) }
}

extern "C" fn shared_program(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Floor` of the PID 1 that cloned this process, suspended until its exec.
    let floor = unsafe { &*(arg as *const Floor) };
    // SAFETY: the child of a clone: system calls on data made before it, then execve or _exit.
    unsafe { floor.exec_program() }
}

impl Floor {
    pub fn new(init: bool) -> Floor {
        let mut s = Vec::new();
        let mount =
            |src: Option<&str>, dst: &str, fstype: Option<&str>, flags, data: Option<&str>| {
                Step::Mount {
                    src: src.map(c),
                    dst: c(dst),
                    fstype: fstype.map(c),
                    flags,
                    data: data.map(c),
                }
            };
        let bind_ro = |s: &mut Vec<Step>, src: String, dst: String, extra: u64| {
            s.push(mount(
                Some(&src),
                &dst,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ));
            s.push(Step::SetAttr {
                path: c(&dst),
                set: RO | NOSUID | NODEV | extra,
                recursive: true,
            });
        };
        s.push(mount(
            None,
            "/",
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        ));
        s.push(mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0700"),
        ));
        s.push(Step::Mkdir(c("/tmp/oldroot")));
        s.push(Step::Mkdir(c("/tmp/newroot")));
        s.push(Step::PivotRoot(c("/tmp"), c("/tmp/oldroot")));
        s.push(mount(
            Some("tmpfs"),
            "/newroot",
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755,size=1048576"),
        ));
        s.push(Step::Mkdir(c("/newroot/usr")));
        bind_ro(&mut s, "/oldroot/usr".into(), "/newroot/usr".into(), 0);
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            s.push(Step::Symlink(c(to), c(format!("/newroot/{link}"))));
        }
        s.push(Step::Mkdir(c("/newroot/etc")));
        for d in ETC_DIRS {
            if Path::new("/etc").join(d).is_dir() {
                s.push(Step::Mkdir(c(format!("/newroot/etc/{d}"))));
                bind_ro(
                    &mut s,
                    format!("/oldroot/etc/{d}"),
                    format!("/newroot/etc/{d}"),
                    0,
                );
            }
        }
        for f in ETC_FILES {
            if let Ok(bytes) = std::fs::read(Path::new("/etc").join(f)) {
                s.push(Step::Write(c(format!("/newroot/etc/{f}")), bytes));
            }
        }
        for (link, to) in [
            ("localtime", "/usr/share/zoneinfo/Etc/UTC"),
            ("os-release", "../usr/lib/os-release"),
        ] {
            s.push(Step::Symlink(c(to), c(format!("/newroot/etc/{link}"))));
        }
        s.push(Step::Write(
            c("/newroot/etc/hosts"),
            b"127.0.0.1 localhost\n::1 localhost\n127.0.1.1 sandbox\n".to_vec(),
        ));
        s.push(Step::Write(c("/newroot/etc/resolv.conf"), b"\n".to_vec()));
        s.push(Step::Mkdir(c("/newroot/dev")));
        s.push(mount(
            Some("tmpfs"),
            "/newroot/dev",
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=0755,size=65536"),
        ));
        for d in DEVICES {
            s.push(Step::Write(c(format!("/newroot/dev/{d}")), Vec::new()));
            s.push(mount(
                Some(&format!("/oldroot/dev/{d}")),
                &format!("/newroot/dev/{d}"),
                None,
                libc::MS_BIND,
                None,
            ));
        }
        s.push(Step::Mkdir(c("/newroot/dev/pts")));
        s.push(mount(
            Some("devpts"),
            "/newroot/dev/pts",
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ));
        for (link, to) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            s.push(Step::Symlink(c(to), c(format!("/newroot/dev/{link}"))));
        }
        s.push(Step::Mkdir(c("/newroot/proc")));
        s.push(mount(
            Some("proc"),
            "/newroot/proc",
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ));
        for masked in ["keys", "timer_list"] {
            if Path::new("/proc").join(masked).exists() {
                s.push(mount(
                    Some("/oldroot/dev/null"),
                    &format!("/newroot/proc/{masked}"),
                    None,
                    libc::MS_BIND,
                    None,
                ));
            }
        }
        if Path::new("/proc/acpi").exists() {
            s.push(mount(
                Some("tmpfs"),
                "/newroot/proc/acpi",
                Some("tmpfs"),
                libc::MS_RDONLY,
                Some("size=0"),
            ));
        }
        for d in ["sys", "bus", "fs", "irq"] {
            if Path::new("/proc").join(d).exists() {
                let p = format!("/newroot/proc/{d}");
                bind_ro(&mut s, p.clone(), p, NOEXEC);
            }
        }
        for (d, data) in [
            ("dev/shm", "mode=1777,size=67108864"),
            ("tmp", "mode=1777,size=67108864"),
        ] {
            s.push(Step::Mkdir(c(format!("/newroot/{d}"))));
            s.push(mount(
                Some("tmpfs"),
                &format!("/newroot/{d}"),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(data),
            ));
        }
        s.push(Step::Chdir(c("/newroot")));
        s.push(Step::PivotRoot(c("."), c(".")));
        s.push(Step::Detach(c(".")));
        s.push(Step::Chdir(c("/")));
        for p in ["/dev", "/"] {
            s.push(Step::SetAttr {
                path: c(p),
                set: RO,
                recursive: false,
            });
        }
        s.push(Step::Hostname);
        s.push(Step::LoopbackUp);
        Floor {
            steps: s,
            exe: c(Path::new("/bin/true").as_os_str().as_bytes()),
            init,
            layers: None,
            shared_memory: false,
        }
    }

    /// The floor with a PID 1 and the kernel's part of seccomp and landlock (`Layers`); `None` where the
    /// filter or the ruleset cannot be made.
    pub fn with_layers() -> Option<Floor> {
        Some(Floor {
            layers: Some(Layers::new()?),
            ..Floor::new(true)
        })
    }

    /// [`Floor::with_layers`] with a PID 1 that shares this process's memory (`CLONE_VM`, a stack of its own).
    pub fn with_layers_shared() -> Option<Floor> {
        Some(Floor {
            shared_memory: true,
            ..Floor::with_layers()?
        })
    }

    /// One run; `clock`, when given, receives the time after each step (nanoseconds, `CLOCK_MONOTONIC`),
    /// index 0 the child's start. True when `/bin/true` exited 0.
    fn run(&self, clock: Option<&Shared>) -> bool {
        // Two threads running cases at once: a child cloned while another thread's release pipe is open
        // would hold that pipe's write end until its exec, and each child could wait for the other's. From the
        // pipe's creation to the release, one thread at a time (the children's work and the waits overlap).
        static RELEASE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = RELEASE.lock().unwrap_or_else(|e| e.into_inner());
        let mut ready = [0i32; 2];
        // SAFETY: `ready` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return false;
        }
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let stacks = self.shared_memory.then(Stacks::new);
        // Kept in this frame until the wait below: the shared-memory PID 1 reads them.
        let args = match &stacks {
            Some(Some(st)) => Some(ChildArgs {
                floor: self,
                ready: ready[0],
                writer: ready[1],
                clock,
                program_stack: st.top(1),
            }),
            _ => None,
        };
        let pid = match (&stacks, &args) {
            (Some(Some(st)), Some(args)) => {
                // SAFETY: PID 1 runs `shared_init` on a stack of its own in this process's memory; it makes
                // only system calls on data that outlives it (this frame waits for it below).
                unsafe {
                    libc::clone(
                        shared_init,
                        st.top(0),
                        flags | libc::CLONE_VM | libc::SIGCHLD,
                        (args as *const ChildArgs<'_>).cast_mut().cast(),
                    ) as libc::c_long
                }
            }
            (Some(_), _) => -1,
            // SAFETY: a fork-like clone (no new stack); the child below makes only system calls on data
            // built before it, and ends in execve or _exit.
            (None, _) => unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flags | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            },
        };
        if pid == 0 {
            // SAFETY: the child: only system calls, no allocation, no locks.
            unsafe { self.child(ready[0], ready[1], clock, std::ptr::null_mut()) }
        }
        // SAFETY: closing our copy of the read end, which nothing else owns.
        unsafe { libc::close(ready[0]) };
        if pid < 0 {
            // SAFETY: as above, the write end.
            unsafe { libc::close(ready[1]) };
            return false;
        }
        let pid = pid as i32;
        let maps = [
            (format!("/proc/{pid}/uid_map"), format!("0 {uid} 1\n")),
            (format!("/proc/{pid}/setgroups"), "deny\n".to_string()),
            (format!("/proc/{pid}/gid_map"), format!("0 {gid} 1\n")),
        ];
        let mapped = maps.iter().all(|(p, v)| std::fs::write(p, v).is_ok());
        // SAFETY: closing the write end releases the child (end of file on its read end).
        unsafe { libc::close(ready[1]) };
        drop(guard);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        mapped && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    /// # Safety
    /// Only in the child of a clone; `program_stack` is the top of a stack for the program's shared-memory
    /// clone (with [`Floor::shared_memory`]).
    unsafe fn child(
        &self,
        ready: i32,
        writer: i32,
        clock: Option<&Shared>,
        program_stack: *mut libc::c_void,
    ) -> ! {
        let now = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        // SAFETY: each call is a system call on descriptors and strings made before the clone.
        unsafe {
            libc::close(writer);
            let mut b = 0u8;
            libc::read(ready, (&mut b as *mut u8).cast(), 1);
            libc::close(ready);
            if let Some(c) = clock {
                c.set(0, now());
            }
            let null = std::ptr::null::<libc::c_char>();
            for (i, step) in self.steps.iter().enumerate() {
                let ok = match step {
                    Step::Mount {
                        src,
                        dst,
                        fstype,
                        flags,
                        data,
                    } => {
                        libc::mount(
                            src.as_ref().map_or(null, |s| s.as_ptr()),
                            dst.as_ptr(),
                            fstype.as_ref().map_or(null, |s| s.as_ptr()),
                            *flags,
                            data.as_ref()
                                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                        ) == 0
                    }
                    Step::SetAttr {
                        path,
                        set,
                        recursive,
                    } => {
                        let attr = libc::mount_attr {
                            attr_set: *set,
                            attr_clr: 0,
                            propagation: 0,
                            userns_fd: 0,
                        };
                        libc::syscall(
                            libc::SYS_mount_setattr,
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            if *recursive { libc::AT_RECURSIVE } else { 0 },
                            &attr as *const libc::mount_attr,
                            std::mem::size_of::<libc::mount_attr>(),
                        ) == 0
                    }
                    Step::Mkdir(p) => libc::mkdir(p.as_ptr(), 0o755) == 0,
                    Step::Symlink(to, p) => libc::symlink(to.as_ptr(), p.as_ptr()) == 0,
                    Step::Write(p, bytes) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                            0o644,
                        );
                        let ok = fd >= 0
                            && (bytes.is_empty()
                                || libc::write(fd, bytes.as_ptr().cast(), bytes.len())
                                    == bytes.len() as isize);
                        libc::close(fd);
                        ok
                    }
                    Step::PivotRoot(new, old) => {
                        libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) == 0
                    }
                    Step::Chdir(p) => libc::chdir(p.as_ptr()) == 0,
                    Step::Detach(p) => libc::umount2(p.as_ptr(), libc::MNT_DETACH) == 0,
                    Step::Hostname => libc::sethostname(b"sandbox".as_ptr().cast(), 7) == 0,
                    Step::LoopbackUp => {
                        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                        let mut req: libc::ifreq = std::mem::zeroed();
                        req.ifr_name[..2]
                            .copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
                        req.ifr_ifru.ifru_flags =
                            (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                        let ok = sock >= 0 && libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0;
                        libc::close(sock);
                        ok
                    }
                };
                if !ok {
                    libc::_exit(100);
                }
                if let Some(c) = clock {
                    c.set(i + 1, now());
                }
            }
            if self.init {
                // A fork-like clone of this (large) process, as the library's init makes; or the program in
                // this memory until its exec, PID 1 suspended meanwhile (as posix_spawn does).
                let pid = if self.shared_memory {
                    libc::clone(
                        shared_program,
                        program_stack,
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        (self as *const Floor).cast_mut().cast(),
                    ) as libc::c_long
                } else {
                    libc::syscall(
                        libc::SYS_clone,
                        libc::SIGCHLD as libc::c_ulong,
                        0usize,
                        0usize,
                        0usize,
                        0usize,
                    )
                };
                if pid > 0 {
                    let mut status = 0;
                    libc::waitpid(pid as i32, &mut status, 0);
                    libc::_exit(if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        1
                    });
                }
                if pid < 0 {
                    libc::_exit(101);
                }
            }
            self.exec_program()
        }
    }

    /// The program's process: the layers, then the exec.
    ///
    /// # Safety
    /// Only in the child of a clone.
    unsafe fn exec_program(&self) -> ! {
        // SAFETY: system calls on data made before the clone.
        unsafe {
            if let Some(l) = &self.layers
                && !l.apply()
            {
                libc::_exit(102);
            }
            let argv = [self.exe.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            libc::execve(self.exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        }
    }
}

/// Two stacks in one anonymous mapping, unmapped when dropped (after the processes on them ended).
struct Stacks(*mut libc::c_void);

impl Stacks {
    fn new() -> Option<Stacks> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(Stacks(p))
    }

    /// The top (highest address) of stack `i`.
    fn top(&self, i: usize) -> *mut libc::c_void {
        self.0.cast::<u8>().wrapping_add((i + 1) * STACK).cast()
    }
}

impl Drop for Stacks {
    fn drop(&mut self) {
        // SAFETY: our own mapping, whose users have ended.
        unsafe { libc::munmap(self.0, 2 * STACK) };
    }
}

/// The benchmark case: one run; with `init`, PID 1 forks the program.
pub fn case(init: bool) -> impl FnMut() -> bool {
    let floor = Floor::new(init);
    move || floor.run(None)
}

/// The benchmark case with PID 1 and the layers' kernel work ([`Floor::with_layers`]); every run fails where
/// they cannot be made.
pub fn case_layers() -> impl FnMut() -> bool {
    let floor = Floor::with_layers();
    move || floor.as_ref().is_some_and(|f| f.run(None))
}

/// [`case_layers`] with a PID 1 that shares this process's memory ([`Floor::with_layers_shared`]).
pub fn case_layers_shared() -> impl FnMut() -> bool {
    let floor = Floor::with_layers_shared();
    move || floor.as_ref().is_some_and(|f| f.run(None))
}

/// Times kept in memory shared with the child (a `MAP_SHARED` anonymous mapping).
struct Shared {
    ptr: *mut u64,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Option<Shared> {
        // SAFETY: a fresh anonymous shared mapping of `len` u64s, unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then(|| Shared {
            ptr: ptr.cast(),
            len,
        })
    }

    fn set(&self, i: usize, v: u64) {
        if i < self.len {
            // SAFETY: in bounds of the mapping; only one process writes at a time (the child, while the
            // parent waits).
            unsafe { self.ptr.add(i).write_volatile(v) }
        }
    }

    fn get(&self, i: usize) -> u64 {
        // SAFETY: in bounds (checked by the caller's loop over `len`).
        unsafe { self.ptr.add(i.min(self.len - 1)).read_volatile() }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}

/// One kind of step: its name, how many steps of it a run makes, and their medians summed.
pub type StepCost = (&'static str, usize, Duration);

/// `runs` timed runs: the median of each step's duration, summed by kind, in the child's order; and the
/// sum of all.
pub fn step_costs(runs: usize) -> Option<(Vec<StepCost>, Duration)> {
    let floor = Floor::new(false);
    let n = floor.steps.len();
    let shared = Shared::new(n + 1)?;
    let mut per_step: Vec<Vec<u64>> = vec![Vec::with_capacity(runs); n];
    for _ in 0..runs {
        if !floor.run(Some(&shared)) {
            return None;
        }
        for (i, v) in per_step.iter_mut().enumerate() {
            v.push(shared.get(i + 1).saturating_sub(shared.get(i)));
        }
    }
    let mut kinds: Vec<StepCost> = Vec::new();
    let mut total = Duration::ZERO;
    for (step, mut v) in floor.steps.iter().zip(per_step) {
        v.sort_unstable();
        let med = Duration::from_nanos(v[v.len() / 2]);
        total += med;
        match kinds.iter_mut().find(|k| k.0 == step.kind()) {
            Some(k) => {
                k.1 += 1;
                k.2 += med;
            }
            None => kinds.push((step.kind(), 1, med)),
        }
    }
    Some((kinds, total))
}

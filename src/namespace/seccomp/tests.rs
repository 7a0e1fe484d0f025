//! Tests of the seccomp module: the compiled program checked instruction by instruction and by running it,
//! then real enforcement on a spawned thread (filters are per thread without TSYNC) or in a forked child
//! that only makes raw system calls (for kills, which end the whole process).

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::policy::seccomp::{CLONE_NEW_FLAGS, load_file, syscalls};
use serde::{Deserialize, Serialize};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

fn default_filter() -> Filter {
    compile(&SeccompProfile::Default, false).expect("the default profile compiles")
}

fn run(program: &[sock_filter], name: &str, args: [u64; 6]) -> u32 {
    let nr = syscall_number(name).unwrap_or_else(|| panic!("{name} is in the table"));
    eval(program, AUDIT_ARCH_X86_64, nr as i32, args).expect("the program evaluates")
}

fn a(first: u64, second: u64, third: u64) -> [u64; 6] {
    [first, second, third, 0, 0, 0]
}

#[test]
fn prologue_kills_foreign_architectures_and_x32() {
    let f = default_filter();
    let fields = |i: &sock_filter| (i.code, i.jt, i.jf, i.k);
    let head: Vec<_> = f.program.iter().take(6).map(fields).collect();
    let want: Vec<_> = PROLOGUE.iter().map(fields).collect();
    assert_eq!(head, want);
    // An int 0x80 call (i386 getpid = 20) and an x32 call (getpid | x32 bit) are killed.
    assert_eq!(eval(&f.program, AUDIT_ARCH_I386, 20, [0; 6]), Some(KILL));
    let x32 = (libc::SYS_getpid as u32 | X32_SYSCALL_BIT) as i32;
    assert_eq!(eval(&f.program, AUDIT_ARCH_X86_64, x32, [0; 6]), Some(KILL));
    // seccompiler's own arch check was dropped: only our prologue loads the arch.
    let arch_loads = f
        .program
        .iter()
        .filter(|i| u32::from(i.code) == BPF_LD | BPF_W | BPF_ABS && i.k == 4);
    assert_eq!(arch_loads.count(), 1);
}

#[test]
fn default_profile_decisions() {
    let p = default_filter().program;
    let cases: &[(&str, [u64; 6], u32)] = &[
        ("keyctl", [0; 6], EPERM),
        ("bpf", [0; 6], EPERM),
        ("io_uring_setup", [0; 6], EPERM),
        ("open_tree_attr", [0; 6], EPERM),
        ("ptrace", a(libc::PTRACE_TRACEME as u64, 0, 0), EPERM),
        ("ioctl", a(0, libc::TIOCSTI, 0), EPERM),
        ("ioctl", a(0, 0x1_0000_5412, 0), EPERM),
        ("ioctl", a(0, libc::TIOCLINUX, 0), EPERM),
        ("ioctl", a(0, libc::FIONREAD, 0), ALLOW),
        ("ioctl", a(0, libc::TCGETS, 0), ALLOW),
        ("socket", a(libc::AF_PACKET as u64, 3, 0), EPERM),
        ("socket", a(libc::AF_ALG as u64, 5, 0), EPERM),
        ("socket", a(libc::AF_VSOCK as u64, 1, 0), EPERM),
        ("socket", a(libc::AF_INET as u64, 1, 0), ALLOW),
        ("socket", a(libc::AF_NETLINK as u64, 3, 9), ALLOW),
        ("clone", a(libc::SIGCHLD as u64, 0, 0), ALLOW),
        ("clone", a(0x003d_0f00, 0, 0), ALLOW), // glibc's pthread_create flags
        (
            "clone",
            a((libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0, 0),
            EPERM,
        ),
        ("clone3", [0; 6], ENOSYS),
        ("unshare", [0; 6], EPERM),
        ("personality", a(0, 0, 0), ALLOW),
        ("personality", a(0xffff_ffff, 0, 0), ALLOW),
        ("personality", a(0x2_0008, 0, 0), ALLOW),
        ("personality", a(0x40_0000, 0, 0), EPERM), // READ_IMPLIES_EXEC
        ("personality", a(0x4_0000, 0, 0), EPERM),  // ADDR_NO_RANDOMIZE
        ("adjtimex", [0; 6], ALLOW),
        ("read", [0; 6], ALLOW),
        ("openat", [0; 6], ALLOW),
        ("landlock_restrict_self", [0; 6], ALLOW),
    ];
    for (name, args, want) in cases {
        assert_eq!(run(&p, name, *args), *want, "{name}({args:x?})");
    }
    for flag in CLONE_NEW_FLAGS {
        assert_eq!(
            run(&p, "clone", a(flag as u64 | 17, 0, 0)),
            EPERM,
            "clone({flag:#x})"
        );
    }
}

#[test]
fn syscall_table_is_consistent() {
    let all: Vec<_> = syscalls().collect();
    let names: BTreeSet<_> = all.iter().map(|(n, _)| n).collect();
    let numbers: BTreeSet<_> = all.iter().map(|(_, nr)| nr).collect();
    assert_eq!(names.len(), all.len(), "duplicate names");
    assert_eq!(numbers.len(), all.len(), "duplicate numbers");
    assert!(
        all.iter()
            .all(|&(_, nr)| (0..SYSCALL_SLOTS as i64).contains(&nr))
    );
    assert_eq!(syscall_number("openat"), Some(libc::SYS_openat));
    assert_eq!(syscall_name(libc::SYS_keyctl as i32), Some("keyctl"));
    assert_eq!(syscall_name(467), Some("open_tree_attr"));
    assert_eq!(syscall_name(-1), None);
}

fn custom(text: &str) -> SeccompProfile {
    SeccompProfile::Custom(toml::from_str(text).expect("valid profile"))
}

#[test]
fn profiles_in_toml() {
    #[derive(Deserialize, Serialize)]
    struct Holder {
        seccomp: SeccompProfile,
    }
    let parse = |t: &str| toml::from_str::<Holder>(t).map(|h| h.seccomp);
    assert_eq!(
        parse("seccomp = \"default\"").unwrap(),
        SeccompProfile::Default
    );
    assert_eq!(parse("seccomp = \"none\"").unwrap(), SeccompProfile::None);
    let err = parse("seccomp = \"strict\"").unwrap_err().to_string();
    assert!(
        err.contains("strict") && err.contains("\"default\", \"none\""),
        "{err}"
    );
    let text = r#"
        [seccomp]
        default_action = "allow"
        [[seccomp.rules]]
        syscall = "ioctl"
        action = "errno"
        errno = 25
        args = [{ index = 1, op = "masked_eq", value = 0x5400, mask = 0xff00, bits = 32 }]
    "#;
    let p = parse(text).unwrap();
    let SeccompProfile::Custom(c) = &p else {
        panic!("{p:?}")
    };
    assert_eq!((c.rules[0].errno, c.rules[0].args[0].bits), (Some(25), 32));
    let again = toml::to_string(&Holder { seccomp: p.clone() }).unwrap();
    assert_eq!(parse(&again).unwrap(), p);
    let typo = parse("[seccomp]\ndefault_action = \"allow\"\nrule = []\n")
        .unwrap_err()
        .to_string();
    assert!(typo.contains("rule"), "{typo}");
    // The default profile round-trips as a custom one and compiles to the same program.
    let builtin = SeccompProfile::Custom(default_profile());
    let same = parse(
        &toml::to_string(&Holder {
            seccomp: builtin.clone(),
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(same, builtin);
    let fields = |f: Filter| {
        f.program
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        fields(compile(&same, false).unwrap()),
        fields(default_filter())
    );
}

#[test]
fn load_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("seccomp-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "default_action = \"errno\"\ndefault_errno = 38\n").unwrap();
    assert_eq!(load_file(&good).unwrap().default_errno, Some(38));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "default_action = \"maybe\"\n").unwrap();
    let err = load_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("maybe"), "{err}");
    let missing = load_file(dir.join("missing.toml")).unwrap_err().to_string();
    assert!(missing.contains("missing.toml"), "{missing}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_rules_are_refused_with_the_fix() {
    let err = |t: &str| compile(&custom(t), false).unwrap_err().to_string();
    let unknown =
        err("default_action = \"allow\"\n[[rules]]\nsyscall = \"frobnicate\"\naction = \"kill\"\n");
    assert!(unknown.contains("`frobnicate`"), "{unknown}");
    let wide = err(
        "default_action = \"allow\"\n[[rules]]\nsyscall = \"ioctl\"\naction = \"kill\"\n\
                    args = [{ index = 1, op = \"eq\", value = 0x100005412, bits = 32 }]\n",
    );
    assert!(wide.contains("32 bits"), "{wide}");
    let mask = err(
        "default_action = \"allow\"\n[[rules]]\nsyscall = \"ioctl\"\naction = \"kill\"\n\
                    args = [{ index = 1, op = \"eq\", value = 1, mask = 1 }]\n",
    );
    assert!(mask.contains("masked_eq"), "{mask}");
    let index = err(
        "default_action = \"allow\"\n[[rules]]\nsyscall = \"read\"\naction = \"kill\"\n\
                     args = [{ index = 6, op = \"eq\", value = 1 }]\n",
    );
    assert!(index.contains("index 6"), "{index}");
    let errno = err(
        "default_action = \"allow\"\n[[rules]]\nsyscall = \"read\"\naction = \"kill\"\nerrno = 1\n",
    );
    assert!(errno.contains("only meaningful"), "{errno}");
}

#[test]
fn profiles_must_let_init_run() {
    let err = compile(
        &custom("default_action = \"allow\"\n[[rules]]\nsyscall = \"poll\"\naction = \"errno\"\n"),
        false,
    );
    assert!(
        matches!(err, Err(SeccompError::InitNeeds("poll"))),
        "{err:?}"
    );
    let err = compile(&custom("default_action = \"kill\"\n"), false);
    assert!(
        matches!(err, Err(SeccompError::InitNeeds("read"))),
        "{err:?}"
    );
    // An allow list that includes init's calls is fine.
    let mut text = String::from("default_action = \"kill\"\n");
    for (name, ..) in INIT_CALLS {
        text.push_str(&format!(
            "[[rules]]\nsyscall = \"{name}\"\naction = \"allow\"\n"
        ));
    }
    let f = compile(&custom(&text), false).unwrap();
    assert_eq!(run(&f.program, "getpid", [0; 6]), KILL);
    assert_eq!(run(&f.program, "poll", [0; 6]), ALLOW);
}

#[test]
fn most_restrictive_rule_wins() {
    let text = r#"
        default_action = "errno"
        default_errno = 13
        [[rules]]
        syscall = "read"
        action = "kill"
        args = [{ index = 0, op = "eq", value = 99 }]
        [[rules]]
        syscall = "read"
        action = "allow"
        [[rules]]
        syscall = "write"
        action = "allow"
        [[rules]]
        syscall = "write"
        action = "errno"
        errno = 28
        args = [{ index = 2, op = "gt", value = 4096 }]
    "#;
    let mut text = text.to_string();
    for (name, ..) in INIT_CALLS
        .iter()
        .filter(|(n, ..)| *n != "read" && *n != "write")
    {
        text.push_str(&format!(
            "[[rules]]\nsyscall = \"{name}\"\naction = \"allow\"\n"
        ));
    }
    let f = compile(&custom(&text), false).unwrap();
    assert_eq!(run(&f.program, "read", a(99, 0, 0)), KILL);
    assert_eq!(
        run(&f.program, "read", a(1u64 << 32 | 99, 0, 0)),
        ALLOW,
        "64-bit compare"
    );
    assert_eq!(run(&f.program, "read", a(3, 0, 0)), ALLOW);
    assert_eq!(
        run(&f.program, "write", a(1, 0, 5000)),
        libc::SECCOMP_RET_ERRNO | 28
    );
    assert_eq!(run(&f.program, "write", a(1, 0, 10)), ALLOW);
    assert_eq!(
        run(&f.program, "getpid", [0; 6]),
        libc::SECCOMP_RET_ERRNO | 13
    );
    // In audit mode `write` can only get 28 (its unconditional allow hides the default's 13) ...
    assert_eq!(
        compile(&custom(&text), true)
            .unwrap()
            .errno_for(libc::SYS_write as i32),
        28
    );
    // ... but a conditional errno leaves the default reachable too: one number, two errnos.
    text.push_str("[[rules]]\nsyscall = \"getppid\"\naction = \"errno\"\nerrno = 28\n");
    text.push_str("args = [{ index = 0, op = \"eq\", value = 1 }]\n");
    let err = compile(&custom(&text), true).unwrap_err().to_string();
    assert!(
        err.contains("`getppid`") && err.contains("[13, 28]"),
        "{err}"
    );
}

#[test]
fn audit_turns_denials_into_notifications() {
    let f = compile(&SeccompProfile::Default, true).unwrap();
    assert!(f.listener);
    assert!(!f.program.iter().any(is_errno_ret), "no errno return left");
    assert_eq!(
        run(&f.program, "keyctl", [0; 6]),
        libc::SECCOMP_RET_USER_NOTIF
    );
    assert_eq!(
        run(&f.program, "clone3", [0; 6]),
        libc::SECCOMP_RET_USER_NOTIF
    );
    assert_eq!(run(&f.program, "read", [0; 6]), ALLOW);
    assert_eq!(eval(&f.program, AUDIT_ARCH_I386, 20, [0; 6]), Some(KILL));
    assert_eq!(f.errno_for(libc::SYS_keyctl as i32), libc::EPERM);
    assert_eq!(f.errno_for(libc::SYS_clone3 as i32), libc::ENOSYS);
    assert_eq!(f.errno_for(libc::SYS_socket as i32), libc::EPERM);
    assert_eq!(
        f.errno_for(100_000),
        libc::EPERM,
        "never 0, which would fake success"
    );
    assert!(!default_filter().listener);
    assert!(
        compile(&SeccompProfile::None, true)
            .unwrap()
            .program
            .is_empty()
    );
}

/// A raw system call: `Ok(return value)` or `Err(errno)`.
fn sys(nr: i64, a: [u64; 6]) -> Result<i64, i32> {
    // SAFETY: callers pass integers, NULL or invalid descriptors only: the kernel writes no memory of ours.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn no_new_privs() {
    // SAFETY: prctl with integer arguments; no_new_privs is per thread.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(ret, 0);
}

/// Runs `f` on a new thread that has `program` installed (the test thread itself stays unfiltered).
fn filtered<T: Send + 'static>(
    program: Vec<sock_filter>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let worker = std::thread::spawn(move || {
        no_new_privs();
        install(&program, false).expect("seccomp(SET_MODE_FILTER)");
        f()
    });
    worker.join().expect("the filtered thread finished")
}

const KEYCTL_BAD_OP: [u64; 6] = [0x7fff, 0, 0, 0, 0, 0];
const TIOCSTI_HIGH: [u64; 6] = [u64::MAX, 0x1_0000_5412, 0, 0, 0, 0]; // fd -1
const PACKET_BAD_FLAG: [u64; 6] = [
    libc::AF_PACKET as u64,
    libc::SOCK_RAW as u64 | 0x100,
    0,
    0,
    0,
    0,
];
const CLONE_NEWNS_FS: [u64; 6] = [(libc::CLONE_NEWNS | libc::CLONE_FS) as u64, 0, 0, 0, 0, 0];

#[test]
fn default_filter_is_enforced() {
    // Unfiltered, these fail with other errnos (bad op, bad fd, bad flag, bad size, NEWNS with FS), so an
    // EPERM/ENOSYS below can only come from the filter.
    assert_eq!(sys(libc::SYS_keyctl, KEYCTL_BAD_OP), Err(libc::EOPNOTSUPP));
    assert_eq!(sys(libc::SYS_ioctl, TIOCSTI_HIGH), Err(libc::EBADF));
    assert_eq!(sys(libc::SYS_socket, PACKET_BAD_FLAG), Err(libc::EINVAL));
    assert_eq!(sys(libc::SYS_clone3, [0; 6]), Err(libc::EINVAL));
    assert_eq!(sys(libc::SYS_clone, CLONE_NEWNS_FS), Err(libc::EINVAL));
    let got = filtered(default_filter().program, || {
        let spawned = std::thread::spawn(|| 7).join().ok(); // clone3 → ENOSYS → glibc falls back to clone
        let unix = sys(
            libc::SYS_socket,
            a(libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0),
        );
        if let Ok(fd) = unix {
            sys(libc::SYS_close, a(fd as u64, 0, 0)).unwrap();
        }
        [
            sys(libc::SYS_keyctl, KEYCTL_BAD_OP),
            sys(libc::SYS_ioctl, TIOCSTI_HIGH),
            sys(libc::SYS_socket, PACKET_BAD_FLAG),
            sys(libc::SYS_clone3, [0; 6]),
            sys(libc::SYS_unshare, a(libc::CLONE_NEWUSER as u64, 0, 0)),
            sys(libc::SYS_clone, CLONE_NEWNS_FS),
            sys(libc::SYS_personality, a(0x40_0000, 0, 0)),
            sys(libc::SYS_ioctl, a(u64::MAX, libc::FIONREAD, 0)), // allowed: reaches the kernel
            sys(libc::SYS_getppid, [0; 6]).map(|p| (p > 0) as i64),
            unix.map(|_| 1),
            spawned.map_or(Err(0), |v| Ok(v as i64)),
        ]
    });
    let (eperm, enosys) = (Err(libc::EPERM), Err(libc::ENOSYS));
    let want = [
        eperm,
        eperm,
        eperm,
        enosys,
        eperm,
        eperm,
        eperm,
        Err(libc::EBADF),
        Ok(1),
        Ok(1),
        Ok(7),
    ];
    assert_eq!(got, want);
}

/// Forks; the child installs `program` and runs `call`, making raw system calls only (this test process is
/// multi-threaded), then exits 0. Returns the child's wait status.
fn in_forked_child(program: &[sock_filter], call: fn()) -> i32 {
    // SAFETY: the child only makes raw system calls on data prepared before the fork and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        let code = if install(program, false).is_ok() {
            call();
            0
        } else {
            2
        };
        // SAFETY: leaving the child without running any of the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is writable; `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

#[test]
fn foreign_abis_and_kill_rules_kill_the_process() {
    let p = default_filter().program;
    // Without the filter an x32 call fails with ENOSYS (this kernel has no x32 ABI) or works.
    let x32 = libc::SYS_getpid | X32_SYSCALL_BIT as i64;
    assert!(matches!(sys(x32, [0; 6]), Err(libc::ENOSYS) | Ok(_)));
    let status = in_forked_child(&p, || {
        let _ = sys(libc::SYS_getpid | X32_SYSCALL_BIT as i64, [0; 6]);
    });
    assert!(
        killed_by_sigsys(status),
        "x32 call: wait status {status:#x}"
    );
    let status = in_forked_child(&p, || {
        // SAFETY: i386 getpid (20) through int 0x80: no arguments, no memory touched; r8-r11 are
        // declared clobbered.
        unsafe {
            std::arch::asm!("int 0x80", inout("eax") 20 => _, out("r8") _, out("r9") _,
                out("r10") _, out("r11") _, options(nostack));
        }
    });
    assert!(
        killed_by_sigsys(status),
        "int 0x80: wait status {status:#x}"
    );
    // A survivor exits 0: the harness itself works.
    assert_eq!(
        in_forked_child(&p, || {
            let _ = sys(libc::SYS_getpid, [0; 6]);
        }),
        0
    );
    let text = "default_action = \"allow\"\n[[rules]]\nsyscall = \"getppid\"\naction = \"kill\"\n";
    let kill = compile(&custom(text), false).unwrap().program;
    let status = in_forked_child(&kill, || {
        let _ = sys(libc::SYS_getppid, [0; 6]);
    });
    assert!(
        killed_by_sigsys(status),
        "kill rule: wait status {status:#x}"
    );
}

#[test]
fn audit_mode_answers_with_the_profile_errno_and_counts() {
    let filter = compile(&SeccompProfile::Default, true).unwrap();
    let program = filter.program.clone();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        no_new_privs();
        let fd = install(&program, true)
            .expect("seccomp(NEW_LISTENER)")
            .expect("a listener");
        tx.send(fd).unwrap();
        let keyctl = sys(libc::SYS_keyctl, KEYCTL_BAD_OP);
        let clone3 = sys(libc::SYS_clone3, [0; 6]);
        let ioctl = sys(libc::SYS_ioctl, TIOCSTI_HIGH);
        (
            keyctl,
            clone3,
            ioctl,
            sys(libc::SYS_getppid, [0; 6]).is_ok(),
        )
    });
    let fd = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker installed the filter");
    let mut denials = Denials::default();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 5000) };
        assert_eq!(ready, 1, "no notification within 5 s");
        seen.push(
            answer_one(fd, &filter, &mut denials, |_, _| {})
                .expect("answered")
                .0,
        );
    }
    let (keyctl, clone3, ioctl, allowed) = worker.join().unwrap();
    assert_eq!(
        (keyctl, clone3, ioctl),
        (Err(libc::EPERM), Err(libc::ENOSYS), Err(libc::EPERM))
    );
    assert!(allowed);
    let nrs = [libc::SYS_keyctl, libc::SYS_clone3, libc::SYS_ioctl].map(|n| n as i32);
    assert_eq!(seen, nrs);
    let counted: Vec<_> = denials
        .nonzero()
        .map(|(nr, c)| (syscall_name(nr).unwrap(), c))
        .collect();
    assert_eq!(counted, [("ioctl", 1), ("keyctl", 1), ("clone3", 1)]);
    // SAFETY: closing the listener this test received.
    unsafe { libc::close(fd) };
}

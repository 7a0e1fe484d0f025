//! `linux.seccomp` translated and compiled by sandkasten's compiler, and installed on a test thread to see
//! the kernel answer as the profile says (each filter stays on its own short-lived thread).

mod common;

use common::*;
use sandkasten::seccomp::{self, Action, CmpOp, SeccompProfile};
use serde_json::{Value, json};

/// The policy's profile of `config` with `s` as its `linux.seccomp`.
fn translated(s: Value) -> (sandbox_runtime::Translated, seccomp::CustomProfile) {
    let mut config = minimal();
    config["linux"] = json!({"seccomp": s});
    let (_dir, t) = translate(&config);
    let t = t.unwrap();
    let SeccompProfile::Custom(profile) = t.policy.seccomp.clone() else {
        panic!("custom profile expected")
    };
    (t, profile)
}

/// Runs `calls` (number and arguments) on a new thread under `profile`'s filter: their errnos (0: success).
fn errnos_under(profile: &SeccompProfile, calls: Vec<(i64, [u64; 3])>) -> Vec<i32> {
    let filter = seccomp::compile(profile, false).unwrap();
    std::thread::spawn(move || {
        // SAFETY: prctl with integer arguments; no_new_privs (needed without CAP_SYS_ADMIN) binds this thread.
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(ret, 0, "PR_SET_NO_NEW_PRIVS");
        seccomp::install(&filter.program, false).expect("installing the filter");
        let run = |(nr, [a, b, c]): (i64, [u64; 3])| {
            // SAFETY: the calls tested take integer arguments only.
            let ret = unsafe { libc::syscall(nr, a, b, c) };
            if ret < 0 {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            } else {
                0
            }
        };
        calls.into_iter().map(run).collect()
    })
    .join()
    .unwrap()
}

/// `SCMP_CMP_MASKED_EQ`: `value` is the mask, `valueTwo` the value; the kernel agrees.
#[test]
fn masked_eq_takes_the_mask_from_value() {
    let (_t, profile) = translated(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
                      "args": [{"index": 0, "value": 240, "valueTwo": 48, "op": "SCMP_CMP_MASKED_EQ"}]}],
    }));
    let cond = &profile.rules[0].args[0];
    assert_eq!(
        (cond.op, cond.mask, cond.value),
        (CmpOp::MaskedEq, Some(0xF0), 0x30)
    );
    // getpgid of pids no process has: the filter answers EDOM (33) when (pid & 0xF0) == 0x30, else the
    // kernel answers ESRCH. 0x..75 tells a swapped reading apart: (0x75 & 0x30) == 0x30, (0x75 & 0xF0) != 0x30.
    let getpgid = |pid: u64| (libc::SYS_getpgid, [pid, 0, 0]);
    let got = errnos_under(
        &SeccompProfile::Custom(profile),
        vec![
            getpgid(0x7FFF_FF35),
            getpgid(0x7FFF_FF75),
            getpgid(0x7FFF_FF45),
        ],
    );
    assert_eq!(got, [libc::EDOM, libc::ESRCH, libc::ESRCH]);
}

/// Docker's and podman's clone rule: allowed only without namespace flags.
#[test]
fn clone_without_namespace_flags() {
    let (t, profile) = translated(small_seccomp());
    let clone = profile.rules.iter().find(|r| r.syscall == "clone").unwrap();
    assert_eq!(clone.args[0].mask, Some(0x7E02_0000));
    assert_eq!(clone.args[0].value, 0);
    // unshare is not allowed at all: ENOSYS, the profile's default.
    let got = errnos_under(&t.policy.seccomp, vec![(libc::SYS_unshare, [0, 0, 0])]);
    assert_eq!(got, [libc::ENOSYS]);
}

/// Actions the sandbox honours differently: noted, and mapped to the nearest stricter one.
#[test]
fn actions_honoured_differently() {
    let (t, profile) = translated(json!({
        "defaultAction": "SCMP_ACT_LOG",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["acct"], "action": "SCMP_ACT_KILL"},
            {"names": ["swapon"], "action": "SCMP_ACT_TRAP"},
            {"names": ["reboot"], "action": "SCMP_ACT_TRACE"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"},
        ],
    }));
    assert_eq!(profile.default_action, Action::Allow);
    let rule = |name: &str| profile.rules.iter().find(|r| r.syscall == name).unwrap();
    assert_eq!(rule("acct").action, Action::Kill);
    assert_eq!(rule("swapon").action, Action::Kill);
    assert_eq!(
        (rule("reboot").action, rule("reboot").errno),
        (Action::Errno, Some(38))
    );
    assert_eq!(
        (rule("mkdir").action, rule("mkdir").errno),
        (Action::Errno, None)
    );
    assert_noted(
        &t,
        &["linux.seccomp.defaultAction SCMP_ACT_LOG is honoured differently"],
    );
    assert_noted(
        &t,
        &["SCMP_ACT_KILL is honoured differently", "whole process"],
    );
    assert_noted(&t, &["SCMP_ACT_TRAP", "SIGSYS"]);
    assert_noted(&t, &["SCMP_ACT_TRACE", "ENOSYS"]);
    assert_noted(&t, &["linux.seccomp.flags (SECCOMP_FILTER_FLAG_LOG)"]);
    assert_noted(&t, &["system calls x86_64 does not have (1: no_such_call)"]);
}

/// podman's default profile (Debian's containers-common), as podman puts it into config.json with its
/// default capabilities: it translates, compiles with sandkasten's compiler, and the kernel answers as it says.
#[test]
fn podman_default_profile() {
    let Some(profile) = podman_seccomp(&PODMAN_CAPS) else {
        eprintln!(
            "skipped: {PODMAN_SECCOMP} is absent (apt-get install golang-github-containers-common)"
        );
        return;
    };
    let (t, custom) = translated(profile);
    assert_eq!(
        (custom.default_action, custom.default_errno),
        (Action::Errno, Some(38))
    );
    assert!(custom.rules.len() > 300, "{} rules", custom.rules.len());
    // Capability-dependent entries resolved as podman does: chroot allowed (CAP_SYS_CHROOT), bpf not.
    let allowed = |name: &str| {
        custom
            .rules
            .iter()
            .any(|r| r.syscall == name && r.action == Action::Allow && r.args.is_empty())
    };
    assert!(allowed("chroot") && allowed("read") && allowed("clone"));
    assert!(!allowed("bpf") && !allowed("init_module"));
    let compiled = seccomp::compile(&t.policy.seccomp, false).expect("podman's profile compiles");
    assert!(!compiled.program.is_empty());
    // socket() of netlink audit gets EINVAL without CAP_AUDIT_WRITE, the default is ENOSYS: two errnos for
    // one call, which audit mode cannot answer, so denials are not counted (and a note says why).
    assert!(!t.policy.audit_denials);
    assert_noted(&t, &["not counted", "socket"]);
    assert_noted(&t, &["calls of SCMP_ARCH_X86, SCMP_ARCH_X32 are killed"]);
    let got = errnos_under(
        &t.policy.seccomp,
        vec![
            (libc::SYS_getppid, [0, 0, 0]),
            (
                libc::SYS_socket,
                [libc::AF_NETLINK as u64, libc::SOCK_RAW as u64, 9],
            ),
            (libc::SYS_bpf, [0, 0, 0]),
            (libc::SYS_init_module, [0, 0, 0]),
        ],
    );
    assert_eq!(got, [0, libc::EINVAL, libc::EPERM, libc::EPERM]);
}

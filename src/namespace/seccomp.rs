//! The seccomp filter: a profile (serde, part of the policy) compiled to a classic BPF program on the host,
//! installed with one raw system call after `clone`.
//!
//! # The program
//! `compile` builds, in order:
//! 1. Our prologue: load `seccomp_data.arch`, kill the process unless it is `AUDIT_ARCH_X86_64` (an `int 0x80`
//!    from a 64-bit process arrives as `AUDIT_ARCH_I386`, with the i386 numbers); load `seccomp_data.nr` and
//!    kill the process when the x32 bit (`0x4000_0000`) is set (x32 calls share the arch value and would
//!    otherwise slip past every rule, which matches exact numbers).
//! 2. The dispatch (`dispatch.rs`): a binary search over the numbers the rules name, which gives a call no
//!    rule names the default action at once and sends the others on to the blocks. The kernel runs the
//!    program for every number when it installs a filter; without the dispatch, that walk through every
//!    block was most of the install's cost.
//! 3. One block per action, most restrictive first (kill, then each errno, then allow), each compiled by
//!    seccompiler with "no rule matched" as a marker return that we rewrite into a jump to the next block.
//!    So when several rules match a call, the most restrictive action wins, whatever their order in the file.
//!    seccompiler starts every program it compiles with its own prologue: `ld [4]` (arch), `jeq
//!    AUDIT_ARCH_X86_64, +1`, `ret KILL_PROCESS`, and then `ld [0]` (nr) before the first syscall
//!    comparison; it never looks at the x32 bit. We check that those first three instructions are exactly
//!    this and drop them (our prologue already did it), keeping its `ld [0]`, which each block needs anyway.
//! 4. A final `ret` of the profile's default action.
//!
//! Then `compact.rs` shortens the whole (seccompiler's pairs of long jumps: 647 -> 374 instructions for the
//! default profile), deciding every call as before: the kernel checks and JIT-compiles every instruction at
//! each install.
//!
//! Audit mode (`compile(.., true)`) rewrites every errno return into `SECCOMP_RET_USER_NOTIF` and records
//! which errno each syscall should get ([`Filter::errno_for`]); kills stay kills.
//!
//! # Design note for wiring (audit mode)
//! The sandbox's init installs the filter on itself, right before forking the program:
//! `install(&filter.program, filter.listener)`; with a listener it gets the notification descriptor. The
//! program inherits the filter through fork and execve. Init then polls the listener with its other
//! descriptors (also while it waits for the exec result: the program's pre-exec code may be notified), and on
//! `POLLIN` calls [`answer_one`], which receives one notification, counts it in a fixed [`Denials`] array
//! (no allocation) and answers with the errno the profile gives. The counts go to the host with the verdict;
//! [`syscall_name`] names them there. Because init runs under the filter, a denied call of its own would wait
//! for an answer from itself forever: `compile` therefore checks, by running the compiled program, that every
//! call init and the pre-exec code make ([`INIT_CALLS`]: read, write, close, poll, ppoll, wait4, kill,
//! rt_sigprocmask, rt_sigaction, rt_sigreturn, restart_syscall, clone(SIGCHLD), setsid, execve, ioctl on the
//! listener, clock_gettime, exit, exit_group) is allowed, and rejects a custom profile that denies one. Keep
//! that list in step with init. Without audit the same placement works (no listener).
//!
//! # Decisions on the default profile
//! Default allow, then a deny list modelled on Docker's default profile; each rule carries its reason in
//! `policy/seccomp.rs`. The whole ptrace family (ptrace, process_vm_readv/writev, kcmp, pidfd_getfd) is
//! denied: exempting `PTRACE_TRACEME` alone helps no debugger (strace and gdb need the other requests too)
//! and TRACEME had kernel bugs of its own; users who need debuggers or LeakSanitizer use a custom profile.
//! Netlink audit sockets are left alone: the kernel already refuses audit messages from a non-initial user
//! namespace with ECONNREFUSED, which libaudit treats as "no audit", while EPERM would make PAM modules fail.
//! `adjtimex`/`clock_adjtime` stay allowed for read-only queries (the mode is behind a pointer the filter
//! cannot read; changing the clock needs CAP_SYS_TIME in the initial user namespace). vm86/vm86old exist only
//! in the i386 table, which the prologue kills. No `SECCOMP_FILTER_FLAG_TSYNC`: the process installing is
//! single-threaded after clone, and the kernel refuses TSYNC with NEW_LISTENER unless TSYNC_ESRCH is added.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::RawFd;

use libc::{BPF_ABS, BPF_ALU, BPF_AND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET};
use libc::{BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub(crate) use crate::policy::seccomp::{
    Action, ArgCond, CmpOp, SeccompError, SeccompProfile, default_profile, syscall_name,
    syscall_number,
};

/// Slots of the per-syscall tables (every x86_64 number is below this).
pub const SYSCALL_SLOTS: usize = 512;
/// seccomp_data.arch of native x86_64 calls.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// Set in the numbers of x32 ABI calls.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The data of the "no rule of this block matched" marker return.
const CONTINUE: u32 = 0xC0DE;

/// The calls init and the program's pre-exec code make after the filter is installed, with the arguments
/// they pass (descriptor 3 stands for any). `compile` checks that the program allows each.
#[rustfmt::skip]
pub const INIT_CALLS: &[(&str, i64, [u64; 6])] = &[
    ("read", libc::SYS_read, [3, 0, 16, 0, 0, 0]),
    ("write", libc::SYS_write, [3, 0, 16, 0, 0, 0]),
    ("close", libc::SYS_close, [3, 0, 0, 0, 0, 0]),
    ("poll", libc::SYS_poll, [0, 3, u64::MAX, 0, 0, 0]),
    ("ppoll", libc::SYS_ppoll, [0, 3, 0, 0, 8, 0]),
    ("wait4", libc::SYS_wait4, [u64::MAX, 0, libc::WNOHANG as u64, 0, 0, 0]),
    ("kill", libc::SYS_kill, [2, libc::SIGTERM as u64, 0, 0, 0, 0]),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask, [2, 0, 0, 8, 0, 0]),
    ("rt_sigaction", libc::SYS_rt_sigaction, [15, 0, 0, 8, 0, 0]),
    ("rt_sigreturn", libc::SYS_rt_sigreturn, [0; 6]),
    ("restart_syscall", libc::SYS_restart_syscall, [0; 6]),
    ("clone", libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
    ("setsid", libc::SYS_setsid, [0; 6]),
    ("execve", libc::SYS_execve, [0; 6]),
    ("ioctl", libc::SYS_ioctl, [3, libc::SECCOMP_IOCTL_NOTIF_RECV, 0, 0, 0, 0]),
    ("ioctl", libc::SYS_ioctl, [3, libc::SECCOMP_IOCTL_NOTIF_SEND, 0, 0, 0, 0]),
    ("clock_gettime", libc::SYS_clock_gettime, [1, 0, 0, 0, 0, 0]),
    ("exit", libc::SYS_exit, [0; 6]),
    ("exit_group", libc::SYS_exit_group, [0; 6]),
];

/// A resolved action; the order is the precedence (most restrictive first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Kill,
    Errno(u16),
    Allow,
}

impl Act {
    fn of(action: Action, errno: Option<u16>, what: &str) -> Result<Act, SeccompError> {
        let bad = |problem: &str| SeccompError::BadRule {
            syscall: what.into(),
            problem: problem.into(),
        };
        match (action, errno) {
            (Action::Errno, e) => match e.unwrap_or(libc::EPERM as u16) {
                e @ 1..=4095 => Ok(Act::Errno(e)),
                _ => Err(bad("errno must be between 1 and 4095")),
            },
            (_, Some(_)) => Err(bad("an errno is only meaningful with action \"errno\"")),
            (Action::Allow, None) => Ok(Act::Allow),
            (Action::Kill, None) => Ok(Act::Kill),
        }
    }

    fn ret(self) -> u32 {
        match self {
            Act::Kill => libc::SECCOMP_RET_KILL_PROCESS,
            Act::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e),
            Act::Allow => libc::SECCOMP_RET_ALLOW,
        }
    }

    fn seccompiler(self) -> SeccompAction {
        match self {
            Act::Kill => SeccompAction::KillProcess,
            Act::Errno(e) => SeccompAction::Errno(u32::from(e)),
            Act::Allow => SeccompAction::Allow,
        }
    }
}

/// A compiled filter, ready for [`install`].
#[derive(Clone)]
pub struct Filter {
    /// The BPF program; empty for the `none` profile (then install nothing).
    pub program: Vec<sock_filter>,
    /// Install with a notification listener (audit mode with at least one errno action).
    pub listener: bool,
    /// `ioctl(0, TIOCSCTTY, 0)` is not killed: a program's pre-exec code may try to take its terminal.
    pub may_claim_tty: bool,
    errnos: [u16; SYSCALL_SLOTS],
    default_errno: u16,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("listener", &self.listener)
            .finish()
    }
}

impl Filter {
    /// The errno a notified call of number `nr` must get (audit mode). Allocation-free; never 0.
    pub fn errno_for(&self, nr: i32) -> i32 {
        let slot = usize::try_from(nr).ok().and_then(|n| self.errnos.get(n));
        match slot.copied().unwrap_or(0) {
            0 => i32::from(self.default_errno),
            e => i32::from(e),
        }
    }
}

const fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Our prologue: wrong architecture or x32 ABI → kill the process.
const PROLOGUE: [sock_filter; 6] = [
    stmt(BPF_LD | BPF_W | BPF_ABS, 4),
    jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1),
    stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
];

fn condition(a: &ArgCond, syscall: &str) -> Result<SeccompCondition, SeccompError> {
    let bad = |problem: String| SeccompError::BadRule {
        syscall: syscall.into(),
        problem,
    };
    if a.index > 5 {
        return Err(bad(format!("argument index {} is not in 0..=5", a.index)));
    }
    let len = match a.bits {
        32 if a.value > u64::from(u32::MAX) || a.mask.is_some_and(|m| m > u64::from(u32::MAX)) => {
            return Err(bad("value or mask does not fit the 32 bits compared".into()));
        }
        32 => SeccompCmpArgLen::Dword,
        64 => SeccompCmpArgLen::Qword,
        b => return Err(bad(format!("bits = {b}: use 32 or 64"))),
    };
    let op = match (a.op, a.mask) {
        (CmpOp::MaskedEq, Some(m)) => SeccompCmpOp::MaskedEq(m),
        (CmpOp::MaskedEq, None) => return Err(bad("op \"masked_eq\" needs a mask".into())),
        (_, Some(_)) => return Err(bad("a mask is only used with op \"masked_eq\"".into())),
        (CmpOp::Eq, None) => SeccompCmpOp::Eq,
        (CmpOp::Ne, None) => SeccompCmpOp::Ne,
        (CmpOp::Lt, None) => SeccompCmpOp::Lt,
        (CmpOp::Le, None) => SeccompCmpOp::Le,
        (CmpOp::Gt, None) => SeccompCmpOp::Gt,
        (CmpOp::Ge, None) => SeccompCmpOp::Ge,
    };
    SeccompCondition::new(a.index, len, op, a.value)
        .map_err(|e| SeccompError::Compile(e.to_string()))
}

/// Drops seccompiler's own arch check (checked to be exactly what the module docs say).
fn without_arch_check(bpf: BpfProgram) -> Result<Vec<sock_filter>, SeccompError> {
    let expected = [
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, 4),
        (BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    let got = bpf
        .iter()
        .take(3)
        .map(|i| (u32::from(i.code), i.jt, i.jf, i.k));
    if bpf.len() < 4 || !got.eq(expected) {
        return Err(SeccompError::Compile(
            "seccompiler's prologue changed; update seccomp.rs".into(),
        ));
    }
    let body = bpf[3..]
        .iter()
        .map(|i| jump(u32::from(i.code), i.k, i.jt, i.jf));
    Ok(body.collect())
}

/// Compiles a profile. With `audit`, errno actions become user notifications (see the module docs). The
/// default profile's filter is compiled ahead (`seccomp/embedded.rs`, checked against this compiler by a
/// test): compiling it took ~110 us a process, a good part of a CLI run's preparation.
pub fn compile(profile: &SeccompProfile, audit: bool) -> Result<Filter, SeccompError> {
    if matches!(profile, SeccompProfile::Default) {
        return Ok(embedded::default_filter(audit));
    }
    compile_with(profile, audit, true)
}

/// [`compile`], with or without the compaction (the tests compare the two).
fn compile_with(
    profile: &SeccompProfile,
    audit: bool,
    compacted: bool,
) -> Result<Filter, SeccompError> {
    let builtin;
    let profile = match profile {
        SeccompProfile::None => {
            return Ok(Filter {
                program: Vec::new(),
                listener: false,
                may_claim_tty: true,
                errnos: [0; SYSCALL_SLOTS],
                default_errno: libc::EPERM as u16,
            });
        }
        SeccompProfile::Default => {
            builtin = default_profile();
            &builtin
        }
        SeccompProfile::Custom(p) => p,
    };
    let default = Act::of(
        profile.default_action,
        profile.default_errno,
        "default_action",
    )?;

    // Rules by action and number; `None` marks an unconditional rule (it matches every call of that number).
    let mut groups: BTreeMap<Act, BTreeMap<i64, Option<Vec<SeccompRule>>>> = BTreeMap::new();
    // Per number: the errnos its rules return, and whether some rule matches it unconditionally.
    let mut reach: BTreeMap<i64, (BTreeSet<u16>, bool)> = BTreeMap::new();
    for r in &profile.rules {
        let nr = syscall_number(&r.syscall)
            .ok_or_else(|| SeccompError::UnknownSyscall(r.syscall.clone()))?;
        let act = Act::of(r.action, r.errno, &r.syscall)?;
        let conds = r.args.iter().map(|a| condition(a, &r.syscall));
        let conds = conds.collect::<Result<Vec<_>, _>>()?;
        let entry = reach.entry(nr).or_default();
        entry.1 |= conds.is_empty();
        if let Act::Errno(e) = act {
            entry.0.insert(e);
        }
        if act == Act::Allow && default == Act::Allow {
            continue; // the least restrictive action adds nothing over an allow default
        }
        let slot = groups
            .entry(act)
            .or_default()
            .entry(nr)
            .or_insert(Some(Vec::new()));
        match (conds.is_empty(), slot.as_mut()) {
            (true, _) => *slot = None,
            (false, Some(list)) => list
                .push(SeccompRule::new(conds).map_err(|e| SeccompError::Compile(e.to_string()))?),
            (false, None) => {}
        }
    }

    let named: BTreeSet<u32> = groups
        .values()
        .flat_map(|g| g.keys())
        .map(|&nr| nr as u32)
        .collect();
    let named: Vec<u32> = named.into_iter().collect();
    let mut program = PROLOGUE.to_vec();
    program.extend(dispatch::tree(&named, default.ret()));
    let mut starts = Vec::new();
    let mut continues = Vec::new(); // (pc, index of the block to continue with)
    for (act, rules) in groups {
        let rules = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        let marker = SeccompAction::Trace(CONTINUE);
        let filter = SeccompFilter::new(rules, marker, act.seccompiler(), TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
        starts.push(program.len());
        for ins in without_arch_check(filter)? {
            if u32::from(ins.code) == BPF_RET | BPF_K && ins.k == libc::SECCOMP_RET_TRACE | CONTINUE
            {
                continues.push((program.len(), starts.len()));
            }
            program.push(ins);
        }
    }
    starts.push(program.len());
    program.push(stmt(BPF_RET | BPF_K, default.ret()));
    for (pc, next) in continues {
        program[pc] = stmt(BPF_JMP | BPF_JA, (starts[next] - pc - 1) as u32);
    }
    if compacted {
        program = compact::compact(&program);
    }
    if program.len() > libc::BPF_MAXINSNS as usize {
        return Err(SeccompError::Compile(format!(
            "the program has {} instructions, more than the kernel's 4096; use fewer rules",
            program.len()
        )));
    }

    // The errno of each denied number, for the audit supervisor.
    let mut errnos = [0u16; SYSCALL_SLOTS];
    for (nr, (mut set, unconditional)) in reach {
        if let Act::Errno(d) = default
            && !unconditional
        {
            set.insert(d);
        }
        let name = || syscall_name(nr as i32).unwrap_or("?").to_string();
        if audit && set.len() > 1 {
            let errnos = set.into_iter().collect();
            return Err(SeccompError::AmbiguousErrno {
                syscall: name(),
                errnos,
            });
        }
        if let (Some(&e), Some(slot)) = (set.first(), errnos.get_mut(nr as usize)) {
            *slot = e;
        }
    }
    let has_errno = program.iter().any(is_errno_ret);
    if audit {
        notify_instead_of_errno(&mut program);
    }
    for &(name, nr, args) in INIT_CALLS {
        if eval(&program, AUDIT_ARCH_X86_64, nr as i32, args) != Some(libc::SECCOMP_RET_ALLOW) {
            return Err(SeccompError::InitNeeds(name));
        }
    }
    let default_errno = match default {
        Act::Errno(e) => e,
        _ => libc::EPERM as u16,
    };
    let tty = eval(
        &program,
        AUDIT_ARCH_X86_64,
        libc::SYS_ioctl as i32,
        [0, libc::TIOCSCTTY, 0, 0, 0, 0],
    );
    let may_claim_tty = tty.is_some_and(|ret| {
        matches!(
            ret & libc::SECCOMP_RET_ACTION_FULL,
            libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_ERRNO | libc::SECCOMP_RET_USER_NOTIF
        )
    });
    Ok(Filter {
        program,
        listener: audit && has_errno,
        may_claim_tty,
        errnos,
        default_errno,
    })
}

/// Audit mode: every errno return becomes a user notification (the supervisor answers with the errno).
fn notify_instead_of_errno(program: &mut [sock_filter]) {
    for ins in program.iter_mut().filter(|i| is_errno_ret(i)) {
        ins.k = libc::SECCOMP_RET_USER_NOTIF;
    }
}

fn is_errno_ret(i: &sock_filter) -> bool {
    u32::from(i.code) == BPF_RET | BPF_K
        && i.k & libc::SECCOMP_RET_ACTION_FULL == libc::SECCOMP_RET_ERRNO
}

/// Runs a seccomp program on one call as the kernel would (only the instructions `compile` emits).
/// `None` for anything else.
pub fn eval(program: &[sock_filter], arch: u32, nr: i32, args: [u64; 6]) -> Option<u32> {
    let word = |k: u32| -> Option<u32> {
        match k {
            0 => Some(nr as u32),
            4 => Some(arch),
            8 | 12 => Some(0),
            16..=60 if k.is_multiple_of(4) => {
                let arg = args[(k as usize - 16) / 8];
                Some(if k.is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                })
            }
            _ => None,
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let ins = program.get(pc)?;
        let branch = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
        pc += 1;
        let k = ins.k;
        match u32::from(ins.code) {
            c if c == BPF_LD | BPF_W | BPF_ABS => acc = word(k)?,
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= k,
            c if c == BPF_JMP | BPF_JA => pc += k as usize,
            c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += branch(acc == k),
            c if c == BPF_JMP | BPF_JGT | BPF_K => pc += branch(acc > k),
            c if c == BPF_JMP | BPF_JGE | BPF_K => pc += branch(acc >= k),
            c if c == BPF_JMP | BPF_JSET | BPF_K => pc += branch(acc & k != 0),
            c if c == BPF_RET | BPF_K => return Some(k),
            _ => return None,
        }
    }
}

fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}

/// Installs `program` on the calling thread: `seccomp(SECCOMP_SET_MODE_FILTER)`, with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER` when `new_listener` (then returns the notification descriptor, which
/// is close-on-exec). Needs `no_new_privs` first. Allocation-free: safe after `clone`.
pub fn install(program: &[sock_filter], new_listener: bool) -> Result<Option<RawFd>, i32> {
    let len = match u16::try_from(program.len()) {
        Ok(0) | Err(_) => return Err(libc::EINVAL),
        Ok(n) => n,
    };
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    let flags = if new_listener {
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
    } else {
        0
    };
    // SAFETY: `fprog` points at `len` valid instructions that outlive the call; the kernel copies them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    match ret {
        r if r < 0 => Err(errno()),
        r if new_listener => Ok(Some(r as RawFd)),
        _ => Ok(None),
    }
}

/// Receives one notification: `(id, syscall number)`. `Err(ENOENT)`: the caller died or was interrupted
/// before it could be received. Allocation-free.
pub fn recv_notification(fd: RawFd) -> Result<(u64, i32, u32), i32> {
    loop {
        // SAFETY: the kernel requires a zeroed seccomp_notif, and all-zero is a valid value of it.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: `req` is a writable seccomp_notif, the size the request encodes.
        let ret = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) };
        match ret {
            0 => return Ok((req.id, req.data.nr, req.pid)),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

/// Fails the notified call `id` with `errno`. `Err(ENOENT)`: the caller is gone. Allocation-free.
pub fn respond_errno(fd: RawFd, id: u64, error: i32) -> Result<(), i32> {
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: -error,
        flags: 0,
    };
    loop {
        // SAFETY: `resp` is a valid seccomp_notif_resp, the size the request encodes.
        let ret = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) };
        match ret {
            0 => return Ok(()),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

/// Denied calls counted by number, in a fixed array (init keeps one; no allocation).
#[derive(Clone, Copy, Debug)]
pub struct Denials {
    /// Count per system call number.
    pub counts: [u32; SYSCALL_SLOTS],
}

impl Default for Denials {
    fn default() -> Self {
        Denials {
            counts: [0; SYSCALL_SLOTS],
        }
    }
}

impl Denials {
    /// Counts one denied call (numbers beyond the table are counted in the last slot).
    pub fn record(&mut self, nr: i32) {
        let slot = usize::try_from(nr)
            .unwrap_or(SYSCALL_SLOTS - 1)
            .min(SYSCALL_SLOTS - 1);
        self.counts[slot] = self.counts[slot].saturating_add(1);
    }

    /// `(number, count)` of every denied number (host side).
    pub fn nonzero(&self) -> impl Iterator<Item = (i32, u32)> + '_ {
        let counts = self.counts.iter().enumerate();
        counts
            .filter(|(_, c)| **c > 0)
            .map(|(nr, c)| (nr as i32, *c))
    }
}

/// Answers one pending notification with the profile's errno and counts it; returns the call's number and
/// the caller's pid (as the listener's pid namespace sees it). `attribute` runs with both before the answer,
/// while the caller is still blocked in the call and so still has its /proc entry (once answered it may exit
/// and be reaped by its parent before the listener looks). Allocation-free: for init's poll loop.
pub fn answer_one(
    fd: RawFd,
    filter: &Filter,
    denials: &mut Denials,
    attribute: impl FnOnce(i32, u32),
) -> Result<(i32, u32), i32> {
    let (id, nr, pid) = recv_notification(fd)?;
    denials.record(nr);
    attribute(nr, pid);
    match respond_errno(fd, id, filter.errno_for(nr)) {
        Ok(()) | Err(libc::ENOENT) => Ok((nr, pid)),
        Err(e) => Err(e),
    }
}

mod compact;
mod dispatch;
mod embedded;
#[cfg(test)]
mod tests;

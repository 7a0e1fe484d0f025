//! The dispatch in front of the action blocks: a binary search over the system call numbers the rules name.
//!
//! seccompiler compiles each block as a chain that compares the number with every named call in turn, so a
//! call no rule names walks every block before it reaches the default action. The kernel walks the program
//! that way once per number when the filter is installed (`seccomp_cache_prepare` finds the calls it may
//! allow without running the filter), which made the install of the default profile cost ~145 us of its
//! ~245. With the dispatch, a number no rule names reaches the default action after a handful of
//! comparisons; a named one goes on to the blocks, which decide exactly as before.

use libc::{BPF_JA, BPF_JGE, BPF_JMP, BPF_K, BPF_RET, sock_filter};

use super::{jump, stmt};

/// The jump target of a leaf that goes on to the blocks, until [`tree`] patches it.
const TO_BLOCKS: u32 = u32::MAX;

/// The dispatch for the numbers in `named` (sorted, distinct), for a program whose blocks follow it
/// directly. Expects the number in the accumulator; a number not in `named` returns `default_ret`. Empty
/// when no rule names a call (the program is then just its default return).
pub(super) fn tree(named: &[u32], default_ret: u32) -> Vec<sock_filter> {
    if named.is_empty() {
        return Vec::new();
    }
    // Where a segment of the number line starts; segments alternate, not named first: [0, b0) not
    // named, [b0, b1) named, [b1, b2) not named, ...
    let mut bounds: Vec<u32> = Vec::new();
    for &nr in named {
        if bounds.last() == Some(&nr) {
            bounds.pop(); // nr continues the named range that ends just before it
        } else {
            bounds.push(nr);
        }
        bounds.push(nr.saturating_add(1));
    }
    let mut program = segments(&bounds, 0, bounds.len(), default_ret);
    let len = program.len();
    for (pc, ins) in program.iter_mut().enumerate() {
        if u32::from(ins.code) == BPF_JMP | BPF_JA && ins.k == TO_BLOCKS {
            ins.k = (len - pc - 1) as u32;
        }
    }
    program
}

/// The search over segments `first..=last` (segment `i` starts at `bounds[i - 1]`, odd ones are named).
fn segments(bounds: &[u32], first: usize, last: usize, default_ret: u32) -> Vec<sock_filter> {
    if first == last {
        return vec![if first % 2 == 1 {
            stmt(BPF_JMP | BPF_JA, TO_BLOCKS)
        } else {
            stmt(BPF_RET | BPF_K, default_ret)
        }];
    }
    let mid = (first + last).div_ceil(2);
    let below = segments(bounds, first, mid - 1, default_ret);
    let above = segments(bounds, mid, last, default_ret);
    let mut out = Vec::with_capacity(below.len() + above.len() + 2);
    let k = bounds[mid - 1];
    match u8::try_from(below.len()) {
        Ok(skip) => out.push(jump(BPF_JMP | BPF_JGE | BPF_K, k, skip, 0)),
        Err(_) => {
            // Too far for a conditional jump: a long jump over the lower half, taken when at or above.
            out.push(jump(BPF_JMP | BPF_JGE | BPF_K, k, 0, 1));
            out.push(stmt(BPF_JMP | BPF_JA, below.len() as u32));
        }
    }
    out.extend(below);
    out.extend(above);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{
        AUDIT_ARCH_X86_64, Action, Filter, INIT_CALLS, PROLOGUE, SeccompProfile, compile,
        default_profile, eval, install, syscall_name, syscall_number,
    };
    use super::*;
    use libc::{BPF_ABS, BPF_LD, BPF_W};

    /// The length of the program's dispatch (it has no loads; the first block starts with one), and the
    /// program without it: the prologue, then the blocks.
    fn without_dispatch(program: &[sock_filter]) -> (usize, Vec<sock_filter>) {
        let body = &program[PROLOGUE.len()..];
        let load = |i: &sock_filter| u32::from(i.code) == BPF_LD | BPF_W | BPF_ABS;
        let len = body.iter().position(load).unwrap_or(0);
        let mut linear = PROLOGUE.to_vec();
        linear.extend_from_slice(&body[len..]);
        (len, linear)
    }

    fn custom(text: &str) -> SeccompProfile {
        SeccompProfile::Custom(toml::from_str(text).expect("valid profile"))
    }

    /// A profile naming every odd call from 101 on, each its own range, so its dispatch needs long jumps:
    /// errno 77, or a kill when the first argument is 0xdead (never, in the test that installs it). Not
    /// `sigaltstack` (131), which the test's thread calls when it ends.
    fn many_ranges() -> SeccompProfile {
        let mut text = String::from("default_action = \"allow\"\n");
        let init: Vec<&str> = INIT_CALLS.iter().map(|c| c.0).collect();
        for nr in (101..=461).step_by(2) {
            let Some(name) = syscall_name(nr).filter(|n| !init.contains(n) && *n != "sigaltstack")
            else {
                continue;
            };
            text.push_str(&format!(
                "[[rules]]\nsyscall = \"{name}\"\naction = \"errno\"\nerrno = 77\n"
            ));
            if nr % 4 == 1 {
                text.push_str(&format!(
                    "[[rules]]\nsyscall = \"{name}\"\naction = \"kill\"\n\
                     args = [{{ index = 0, op = \"eq\", value = 0xdead }}]\n"
                ));
            }
        }
        custom(&text)
    }

    /// Profiles of every shape: with each action, an allow list, one rule, none.
    pub(in super::super) fn profiles() -> Vec<(&'static str, SeccompProfile)> {
        let mut allow_list = String::from("default_action = \"errno\"\ndefault_errno = 38\n");
        for name in INIT_CALLS.iter().map(|c| c.0).chain(["getpid"]) {
            allow_list.push_str(&format!(
                "[[rules]]\nsyscall = \"{name}\"\naction = \"allow\"\n"
            ));
        }
        let one = "default_action = \"allow\"\n[[rules]]\nsyscall = \"getpid\"\naction = \"kill\"\n\
                   args = [{ index = 0, op = \"eq\", value = 7 }]\n";
        vec![
            ("default", SeccompProfile::Default),
            ("many ranges", many_ranges()),
            ("allow list", custom(&allow_list)),
            ("one rule", custom(one)),
            ("no rule", custom("default_action = \"allow\"\n")),
        ]
    }

    /// Arguments each decision is checked with: none, the values the test profiles compare, all ones.
    pub(in super::super) const ARG_SETS: [[u64; 6]; 4] = [
        [0; 6],
        [7, 0, 0, 0, 0, 0],
        [0xdead, 0x5412, 0x800, 1, 2, 3],
        [u64::MAX; 6],
    ];

    /// The numbers the blocks look at: every rule's, except allow rules under an allow default.
    fn named(profile: &SeccompProfile) -> Vec<i32> {
        let p = match profile {
            SeccompProfile::Custom(p) => p.clone(),
            _ => default_profile(),
        };
        let plain_allow = |a: Action| a == Action::Allow && p.default_action == Action::Allow;
        (p.rules.iter().filter(|r| !plain_allow(r.action)))
            .map(|r| syscall_number(&r.syscall).expect("a known call") as i32)
            .collect()
    }

    #[test]
    fn the_dispatch_decides_as_the_blocks_do_and_alone_for_calls_no_rule_names() {
        for (what, profile) in profiles() {
            let named = named(&profile);
            for audit in [false, true] {
                let Filter { program, .. } = compile(&profile, audit).expect(what);
                let (len, linear) = without_dispatch(&program);
                let head = &program[..PROLOGUE.len() + len];
                for nr in 0..600 {
                    for args in ARG_SETS {
                        let full = eval(&program, AUDIT_ARCH_X86_64, nr, args);
                        let blocks = eval(&linear, AUDIT_ARCH_X86_64, nr, args);
                        assert_eq!(full, blocks, "{what}, audit {audit}: call {nr}");
                        // The dispatch answers a call no rule names; a named one runs off its end. (No
                        // rule, no dispatch: the program is its default return.)
                        if len == 0 {
                            assert!(named.is_empty(), "{what}");
                            continue;
                        }
                        let alone = eval(head, AUDIT_ARCH_X86_64, nr, args);
                        let expected = if named.contains(&nr) { None } else { full };
                        assert_eq!(alone, expected, "{what}, audit {audit}: call {nr}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_long_dispatch_is_taken_by_the_kernel() {
        let filter = compile(&many_ranges(), false).expect("compiles");
        let (len, _) = without_dispatch(&filter.program);
        let dispatch = &filter.program[PROLOGUE.len()..][..len];
        let long = dispatch.windows(2).any(|w| {
            u32::from(w[0].code) == BPF_JMP | BPF_JGE | BPF_K
                && (w[0].jt, w[0].jf) == (0, 1)
                && u32::from(w[1].code) == BPF_JMP | BPF_JA
        });
        assert!(long, "the dispatch of {len} instructions has no long jump");
        // Installed for real on a thread of its own (filters are per thread): `time` (201, named) fails
        // with the profile's errno, `getpid` (39, not named) runs.
        let worker = std::thread::spawn(move || {
            // SAFETY: prctl with integer arguments; no_new_privs is per thread.
            let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            assert_eq!(set, 0);
            install(&filter.program, false)?;
            // SAFETY: raw calls with integer arguments (`time` with a null pointer writes nothing).
            let time = unsafe { libc::syscall(libc::SYS_time, 0) };
            let errno = nix::errno::Errno::last_raw();
            // SAFETY: as above.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            Ok::<_, i32>((time, errno, pid))
        });
        let (time, errno, pid) = worker.join().expect("the worker ran").expect("installed");
        assert_eq!((time, errno), (-1, 77));
        assert_eq!(pid, i64::from(std::process::id()));
    }
}

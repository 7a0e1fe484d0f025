//! Compaction of a compiled program, which keeps every decision as it is.
//!
//! seccompiler reaches each system call's rules through a pair of unconditional jumps after its comparison
//! (`jeq nr, 0, 1; ja rules; ja next`), so that any distance can be jumped; about half of the default
//! profile's instructions were such jumps. The kernel checks, converts and JIT-compiles every instruction
//! at each install (~0.1 us each here), so they cost each run. Compaction points every jump straight at
//! where a chain of unconditional jumps ends (a conditional one only where that is within its 255
//! instructions), turns an unconditional jump to a return into that return, and drops what can no longer
//! be reached. Jumps only go forward, and dropping instructions only shortens them, so each still fits.

use libc::{BPF_JA, BPF_JMP, BPF_RET, sock_filter};

/// The instruction class bits of a code (`BPF_CLASS`).
const CLASS: u32 = 0x07;

fn is_ja(i: &sock_filter) -> bool {
    u32::from(i.code) == BPF_JMP | BPF_JA
}

fn is_ret(i: &sock_filter) -> bool {
    u32::from(i.code) & CLASS == BPF_RET
}

fn is_cond(i: &sock_filter) -> bool {
    u32::from(i.code) & CLASS == BPF_JMP && !is_ja(i)
}

/// The compacted program. `program` must be valid: every jump forward and inside it.
pub(super) fn compact(program: &[sock_filter]) -> Vec<sock_filter> {
    let n = program.len();
    // Where each instruction's jumps land, as absolute positions.
    let ja_target = |i: usize| i + 1 + program[i].k as usize;
    // Where a chain of unconditional jumps starting at `t` ends.
    let end = |mut t: usize| {
        while t < n && is_ja(&program[t]) {
            t = ja_target(t);
        }
        t
    };
    let mut out: Vec<sock_filter> = program.to_vec();
    // (true target, false target) of each jump, absolute.
    let mut targets: Vec<(usize, usize)> = vec![(0, 0); n];
    for i in 0..n {
        let ins = &program[i];
        if is_ja(ins) {
            let t = end(ja_target(i));
            match program.get(t) {
                Some(r) if is_ret(r) => out[i] = *r,
                _ => targets[i] = (t, t),
            }
        } else if is_cond(ins) {
            let near = |t: usize| {
                let e = end(t);
                if e - (i + 1) <= usize::from(u8::MAX) {
                    e
                } else {
                    t
                }
            };
            targets[i] = (
                near(i + 1 + usize::from(ins.jt)),
                near(i + 1 + usize::from(ins.jf)),
            );
        }
    }
    // What can still be reached from the first instruction (jumps only go forward: one pass).
    let mut reached = vec![false; n];
    if n > 0 {
        reached[0] = true;
    }
    for i in 0..n {
        if !reached[i] {
            continue;
        }
        let ins = &out[i];
        let next: [Option<usize>; 2] = if is_ret(ins) {
            [None, None]
        } else if is_ja(ins) || is_cond(ins) {
            [Some(targets[i].0), Some(targets[i].1)]
        } else {
            [Some(i + 1), None]
        };
        for t in next.into_iter().flatten() {
            if let Some(r) = reached.get_mut(t) {
                *r = true;
            }
        }
    }
    // New positions, then the jumps' new offsets.
    let mut at = vec![0usize; n + 1];
    let mut kept = 0;
    for i in 0..n {
        at[i] = kept;
        kept += usize::from(reached[i]);
    }
    at[n] = kept;
    let mut compacted = Vec::with_capacity(kept);
    for i in (0..n).filter(|&i| reached[i]) {
        let mut ins = out[i];
        let offset = |t: usize| at[t] - at[i] - 1;
        if is_ja(&ins) {
            ins.k = offset(targets[i].0) as u32;
        } else if is_cond(&ins) {
            // Shorter than before, so within 255.
            ins.jt = offset(targets[i].0) as u8;
            ins.jf = offset(targets[i].1) as u8;
        }
        compacted.push(ins);
    }
    compacted
}

#[cfg(test)]
mod tests {
    use super::super::{AUDIT_ARCH_X86_64, PROLOGUE, compile_with, eval, jump, stmt};
    use super::*;
    use libc::{BPF_JEQ, BPF_JGE, BPF_K};

    #[test]
    fn compaction_keeps_every_decision_and_drops_the_jump_pairs() {
        use super::super::dispatch::tests::{ARG_SETS, profiles};
        for (what, profile) in profiles() {
            for audit in [false, true] {
                let long = compile_with(&profile, audit, false).expect(what).program;
                let short = compile_with(&profile, audit, true).expect(what).program;
                assert!(short.len() <= long.len(), "{what}");
                for nr in 0..600 {
                    for args in ARG_SETS {
                        let want = eval(&long, AUDIT_ARCH_X86_64, nr, args);
                        let got = eval(&short, AUDIT_ARCH_X86_64, nr, args);
                        assert_eq!(got, want, "{what}, audit {audit}: call {nr} {args:?}");
                    }
                }
                if what == "default" {
                    // seccompiler's jump pairs are gone: at least a third shorter.
                    assert!(
                        short.len() * 3 <= long.len() * 2,
                        "{} -> {}",
                        long.len(),
                        short.len()
                    );
                }
            }
        }
    }

    #[test]
    fn a_target_beyond_255_keeps_its_hop() {
        // 6: nr 1 -> 7 (a hop to 308), else 8: 299 comparisons that fall through either way, then allow;
        // 308: reload nr, fail with EPERM. The hop cannot go: 308 is 301 instructions from 6.
        let mut p = PROLOGUE.to_vec();
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 1));
        p.push(stmt(BPF_JMP | BPF_JA, 300));
        for i in 0..299 {
            p.push(jump(BPF_JMP | BPF_JGE | BPF_K, 1000 + i, 0, 0));
        }
        p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
        p.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0));
        p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | 1));
        assert_eq!(p.len(), 310);
        let short = compact(&p);
        let fields = |p: &[sock_filter]| {
            p.iter()
                .map(|i| (i.code, i.jt, i.jf, i.k))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&short), fields(&p));
        for nr in 0..4 {
            assert_eq!(
                eval(&short, AUDIT_ARCH_X86_64, nr, [0; 6]),
                eval(&p, AUDIT_ARCH_X86_64, nr, [0; 6]),
                "call {nr}"
            );
        }
    }

    #[test]
    fn hops_to_returns_become_returns_and_unreached_code_goes() {
        // 6: nr 1 -> 7, else 8; 7: hop to 9, a hop to the kill at 11; 8: allow; 10: an errno never reached.
        let mut p = PROLOGUE.to_vec();
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 1));
        p.push(stmt(BPF_JMP | BPF_JA, 1));
        p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
        p.push(stmt(BPF_JMP | BPF_JA, 1));
        p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | 2));
        p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
        let short = compact(&p);
        // The comparison jumps straight at the kill; the hops, and the errno nothing reaches, are gone.
        let mut want = PROLOGUE.to_vec();
        want.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 1, 0));
        want.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
        want.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
        let fields = |p: &[sock_filter]| {
            p.iter()
                .map(|i| (i.code, i.jt, i.jf, i.k))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&short), fields(&want));
    }
}

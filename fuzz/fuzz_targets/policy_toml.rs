//! Arbitrary bytes as a policy file: `Policy::from_toml_str`, then, for a policy that parses, its TOML round
//! trip, `validate`, the seccomp compiler (and the filter run on a few calls) and the namespace backend's
//! planner, which resolve host paths but change nothing. Each must return an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandkasten::Policy;
use sandkasten::seccomp;

/// `AUDIT_ARCH_X86_64`.
const ARCH: u32 = 0xc000_003e;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml_str(text) else {
        return;
    };
    // What the library writes, it reads back.
    let written = policy.to_toml();
    let again = Policy::from_toml_str(&written)
        .unwrap_or_else(|e| panic!("a serialised policy does not parse: {e}\n{written}"));
    if policy.validate().is_err() {
        return;
    }
    // (A valid policy has no NaN, so equality is meaningful.)
    assert_eq!(
        again, policy,
        "the TOML round trip changed the policy:\n{written}"
    );
    for audit in [false, true] {
        let Ok(filter) = seccomp::compile(&policy.seccomp, audit) else {
            continue;
        };
        if filter.program.is_empty() {
            continue;
        }
        for nr in [0, 1, 2, 56, 59, 101, 165, 272, 321, 435, 999, -1] {
            let args = [0, 1, u64::MAX, 0x1_0000_5412, 0x5412, 1 << 31];
            assert!(
                sandkasten::fuzzing::seccomp_eval(&filter.program, ARCH, nr, args).is_some(),
                "the compiled filter does not run on call {nr}"
            );
            let errno = filter.errno_for(nr);
            assert!(errno > 0, "errno_for({nr}) = {errno}");
        }
    }
    let _ = sandkasten::fuzzing::plan(&policy);
});

//! Code shared by the demo binaries: host-side helpers for the runners (`coderun`, `sandbox-test-runner`)
//! and the benchmark sections of `sandbox-bench`.

pub mod bench;
pub mod host;

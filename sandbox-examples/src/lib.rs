//! Code shared by the demo binaries: host-side helpers for the runners (`coderun`, `sandbox-test-runner`),
//! `coderun`'s language table, and the benchmark sections of `sandbox-bench`.

pub mod bench;
pub mod host;
pub mod lang;

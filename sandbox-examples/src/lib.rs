//! Code shared by the demo binaries: host-side helpers for the runners (`coderun`, `sandbox-test-runner`),
//! `coderun`'s bounded output reader and language table, and the benchmark sections of `sandbox-bench`.

pub mod bench;
pub mod capture;
pub mod host;
pub mod lang;

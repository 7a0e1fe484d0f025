//! The benchmark sections of `sandbox-bench` beyond spawn latency.

pub mod floor;
pub mod image;
pub mod lifecycle;
pub mod more;
pub mod vm;

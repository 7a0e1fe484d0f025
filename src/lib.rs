//! # sandbox
//!
//! Run untrusted programs with strong defaults: new user, pid, mount, net, ipc, uts and cgroup namespaces, a
//! fresh read-only root, no network (or user-mode networking through `pasta`), no capabilities, and an honest
//! verdict of what happened.
//!
//! ```
//! use sandkasten::{Policy, Sandbox};
//! use std::time::Duration;
//!
//! let outcome = Sandbox::new("sh")
//!     .args(["-c", "echo hello from $(hostname)"])
//!     .policy(Policy::default().timeout(Duration::from_secs(5)))
//!     .output()?;
//! assert!(outcome.status.success());
//! assert_eq!(outcome.stdout, b"hello from sandbox\n");
//! # Ok::<(), sandkasten::Error>(())
//! ```
#![warn(missing_docs)]

mod backend;
mod command;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "vm")]
mod guest;
pub mod image;
mod namespace;
pub mod outcome;
pub mod policy;
pub mod probe;
#[cfg(feature = "vm")]
#[doc(hidden)]
pub mod protocol;
mod running;
mod session;
#[cfg(feature = "vm")]
pub mod vm;

/// seccomp profiles: the policy's description ([`SeccompProfile`](seccomp::SeccompProfile), TOML profile
/// files, the default profile with a reason per rule, x86_64 system call names), and the compiler to the BPF
/// program a sandbox installs, for installing the same filter elsewhere.
pub mod seccomp {
    pub use crate::namespace::seccomp::{Filter, compile, install};
    pub use crate::policy::seccomp::*;
}

/// The entry point of the guest agent binary `sandbox-init` (PID 1 of our microVM): not for library users.
#[cfg(feature = "vm")]
#[doc(hidden)]
pub use guest::main as agent_main;

// The builtin engine's VMM, a crate of its own (not part of this crate's API): `crate::vmm::` paths.
#[cfg(feature = "vm")]
use sandkasten_vmm as vmm;

pub use backend::{Backend, BootWatch, SnapshotCache, VmEngine};
pub use command::{Sandbox, Stdio};
pub use error::Error;
pub use namespace::DEFAULT_PATH;
pub use outcome::{BackendKind, Outcome, OutputLimit, SetupFailure, Stage, Status, Usage};
pub use policy::{
    Capability, IdMapping, Mount, Network, Policy, PolicyError, Protocol, Publish, Rootfs,
};
pub use probe::{HostReport, probe};
pub use running::SandboxChild;

/// The async API (cargo feature `tokio`): [`Sandbox::spawn_async`], [`Sandbox::output_async`],
/// [`Sandbox::status_async`] and [`AsyncChild`](tokio::AsyncChild), whose end and stdio pipes are driven by
/// tokio's reactor. Works on every backend, with [`VmPool`] and with a [`Session`]'s commands.
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use crate::running::aio::{AsyncChild, ChildStderr, ChildStdin, ChildStdout};
}
pub use session::{Detach, Detached, DetachedState, Session};
#[cfg(feature = "vm")]
pub use vm::pool::{PoolOptions, PoolShare, PoolStats, VmPool};

/// The README's Rust examples, compiled as doc tests (`cargo test --doc`): they stay true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

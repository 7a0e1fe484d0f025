//! Entry points for the fuzz targets in `fuzz/`, compiled only under `cargo fuzz` (which passes
//! `--cfg fuzzing`): the crate-private parts of preparing a run that read the host but change nothing.

use crate::Policy;

/// Plans the namespace backend's filesystem view for `policy`, as [`crate::Sandbox`] does after
/// [`Policy::validate`]: the planner resolves bind sources and reads the small `/etc` files of the system view,
/// and creates nothing. Returns the number of steps, or the planner's error.
pub fn plan(policy: &Policy) -> Result<usize, String> {
    crate::namespace::plan::plan(policy)
        .map(|p| p.steps.len())
        .map_err(|e| e.to_string())
}

/// The sandbox the guest agent would build for `spec` (it runs nothing).
#[cfg(feature = "vm")]
pub fn sandbox_for(spec: &crate::protocol::RunSpec) -> crate::Sandbox {
    crate::guest::sandbox_for(spec)
}

/// Runs a compiled seccomp program on one call as the kernel would (`None` for an instruction the compiler
/// never emits).
pub use crate::namespace::seccomp::eval as seccomp_eval;

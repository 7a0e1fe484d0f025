//! Entry points for the fuzz targets in `fuzz/`, compiled only under `cargo fuzz` (which passes
//! `--cfg fuzzing`): the crate-private parts of preparing a run that read the host but change nothing.

use crate::Policy;

/// Plans the namespace backend's filesystem view for `policy`, as [`crate::Sandbox`] does after
/// [`Policy::validate`]: the planner resolves bind sources and reads the small `/etc` files of the system view,
/// and creates nothing. Returns the number of steps, or the planner's error.
pub fn plan(policy: &Policy) -> Result<usize, String> {
    crate::namespace::plan::plan_with_root(policy, None)
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

/// Applies `tar` as an image layer into a fresh directory under the system's temp dir, then checks that
/// nothing was written beside the layer's tree, and removes it. Returns the entries applied, or the error.
pub fn apply_layer(tar: &[u8]) -> Result<u64, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sandbox-fuzz-layer.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let bounds = crate::image::fuzz_bounds();
    let result = crate::image::apply_for_fuzzing(tar, &root, bounds);
    let beside: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(beside, ["root"], "the layer wrote beside its tree");
    crate::image::remove_for_fuzzing(&dir);
    result
}

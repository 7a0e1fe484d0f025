//! A warm VM and the snapshot cache ([`crate::vm::snapshot_cache`]): a restored VM is
//! checked before it serves (the VMM says it restored, the agent answers a ping with a new READY line);
//! a booted one is saved at READY, before its first run mounts anything. A failed restore deletes the
//! snapshot and says why; the pool then boots instead ([`VmError::RestoreFailed`]).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::vm::error::VmError;
use crate::vm::snapshot_cache::{Session, SnapshotError};

/// For a VM being restored: waits for the VMM and pings the agent on `control`. Returns the session (for
/// a booting VM, to save it at READY) and whether the VM is restored. On failure the snapshot is deleted
/// and `vmm_error` (called once the VMM is gone) tells why.
pub(in crate::vm) fn restore_snapshot(
    snapshot: Option<Session>,
    control: &UnixStream,
    limit: Duration,
) -> Result<(Option<Session>, bool), SnapshotError> {
    let Some(mut s) = snapshot else {
        return Ok((None, false));
    };
    if !s.restores() {
        return Ok((Some(s), false));
    }
    match s.resume_restored(control, limit) {
        Ok(()) => Ok((Some(s), true)),
        Err(e) => {
            s.discard();
            Err(e)
        }
    }
}

/// The failure of a VM that was restored: the snapshot is deleted and the message marks it for a boot.
pub(in crate::vm) fn restore_failed(
    restored: bool,
    snapshot: Option<Session>,
    failure: VmError,
) -> VmError {
    if !restored {
        return failure;
    }
    if let Some(s) = snapshot {
        s.discard();
    }
    VmError::RestoreFailed {
        why: Box::new(failure),
        vmm_said: String::new(),
    }
}

/// The failure of a VMM that could not restore, with what it said.
pub(in crate::vm) fn vmm_refused(why: SnapshotError, vmm_said: &str) -> VmError {
    VmError::RestoreFailed {
        why: Box::new(why.into()),
        vmm_said: vmm_said.to_string(),
    }
}

/// Saves a booted VM at READY into the cache; a failure is only reported (the VM goes on anyway).
pub(in crate::vm) fn save_snapshot(session: Session, limit: Duration) {
    match session.save(limit.min(Duration::from_secs(120))) {
        Ok((path, r)) => tracing::info!(
            path = %path.display(),
            file_len = r.file_len,
            ram_written = r.ram_written,
            paused_ms = r.paused_ms,
            refused = ?r.refused,
            "saved a snapshot of the booted VM"
        ),
        Err(e) => tracing::warn!("could not save a snapshot of the booted VM: {e}"),
    }
}

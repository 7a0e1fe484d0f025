//! A cold run and the snapshot cache ([`super::snapshot_cache`]): its VM is restored
//! from the cached snapshot of the same guest instead of booted when there is one; else it boots and is
//! saved at READY, before its agent reads the run's specification, so the next cold run of the same guest
//! need not boot. The guest is the same whatever the run (the snapshot is taken before anything is mounted
//! or run): the key is the kernel, the agent, RAM, the command line and the devices as the guest sees them.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use super::control::ControlState;
use super::error::{RESTORE_FAILED, VmError};
use super::launch::{self, Engine, Started};
use super::pool::snapshot::save_snapshot;
use super::qemu::Share;
use super::snapshot_cache::Session;

/// Starts the VM of a cold run; with a `cache` directory and an engine with snapshots, restored from a snapshot
/// (a restore that fails deletes the snapshot and boots instead) or booted with a [`Session`] to save it,
/// which [`save_then_send`] uses.
pub(super) fn start(
    engine: Engine,
    shares: &[Share],
    size: (u64, u32),
    with_stdin: bool,
    deadline: Option<Duration>,
    cache: Option<&Path>,
    net: Option<&OwnedFd>,
) -> Result<(Started, Option<Session>), VmError> {
    let start = |cache| launch::start_vm(engine, shares, size, with_stdin, deadline, cache, net);
    let mut started = start(cache)?;
    let Some(mut session) = started.snapshot.take() else {
        return Ok((started, None));
    };
    if !session.restores() {
        return Ok((started, Some(session)));
    }
    // The VMM says it restored, the agent is pinged; its new READY line, like a booted agent's, is what the
    // run waits for.
    match session.resume_restored(&started.channels.control, engine.boot_limit()) {
        Ok(()) => {
            started.info.restored = true;
            Ok((started, None))
        }
        Err(why) => {
            session.discard();
            started.host.abort();
            tracing::warn!("{RESTORE_FAILED} (the snapshot is deleted): {why}; booting instead");
            // A plain boot: another process may have saved a new snapshot meanwhile, and one retry is enough.
            let started = start(None)?;
            Ok((started, None))
        }
    }
}

/// Starts the run (`send`: its stdin relay and its specification); with a `session`, only once the agent
/// said READY on its `control` port and its guest was saved, so that nothing of the run is in the
/// snapshot. A save that fails is only logged: the run goes on in the booted VM.
pub(super) fn save_then_send(
    session: Option<Session>,
    control: &ControlState,
    boot_limit: Duration,
    send: impl FnOnce(),
) {
    if let Some(session) = session {
        if !control.wait_ready(boot_limit) {
            // No READY: the boot watch ends the VM; nothing to save or send.
            return;
        }
        save_snapshot(session, boot_limit);
    }
    send();
}

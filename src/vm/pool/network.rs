//! User-mode networking on a pool's VMs ([`PoolOptions::user_network`]): every VM gets passt when it boots,
//! and a run or session that asks for `network = "user"` gets the pool's link in its spec (the guest's agent
//! configures `eth0` once, at the first such run).

use std::os::fd::OwnedFd;

use super::{PoolInner, PoolOptions};
use crate::namespace::network::passt::{self, Link};
use crate::namespace::network::pasta::Helper;
use crate::policy::{Network, Policy};
use crate::protocol::GuestNet;
use crate::vm::engine;
use crate::vm::error::VmError;

/// The pool's link, read once when the pool is made (and passt looked for, so a pool that cannot have
/// the network fails when it is made, not at its first boot).
pub(super) fn link(options: &PoolOptions) -> Result<Option<Link>, VmError> {
    if !options.user_network {
        return Ok(None);
    }
    passt::find().map_err(VmError::Confine)?;
    passt::host_link().map(Some).map_err(VmError::Confine)
}

impl PoolInner {
    /// passt for a VM about to boot (none without user networking): its helper and the VMM's socket.
    pub(super) fn passt(&self) -> Result<Option<(Helper, OwnedFd)>, VmError> {
        self.link
            .as_ref()
            .map(|link| engine::start_passt(link, &[]))
            .transpose()
    }

    /// What a run's or session's spec carries for its `network`: the pool's link for `user` (the guest
    /// configures `eth0` with it), refused with the way out on a pool without it or with published ports.
    pub(super) fn guest_net(&self, policy: &Policy) -> Result<Option<GuestNet>, VmError> {
        if policy.network != Network::User {
            return Ok(None);
        }
        if !policy.publish.is_empty() {
            return Err(VmError::PoolPublish);
        }
        // None: run_spec refuses it (VmError::PoolNetwork).
        Ok(self.link.as_ref().map(engine::guest_net))
    }
}

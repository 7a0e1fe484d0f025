//! A run as the guest's agent gets it: the [`RunSpec`] of a [`Launch`], written once for cold runs
//! ([`guest_spec`]: the run's own shares) and warm VMs ([`run_spec`] with the pool's shares).
//!
//! The host's system (`/usr` and `/etc` as the VMM's sandbox shows them, plus the top-level links) and every
//! bind source become read-only or writable shares; the policy's bind sources are rewritten to where the agent
//! mounts them, after the same link checks as the namespace backend's; inside the guest the agent is root,
//! and the sandbox maps to the guest's nobody.

use std::path::{Path, PathBuf};

use super::error::VmError;
use super::qemu::Share;
use crate::namespace::Launch;
use crate::namespace::rootfs::{Applied, Root};
use crate::outcome::{Outcome, RootfsEnforced};
use crate::policy::{Mount, Network, Policy, SYSTEM_TOP};
use crate::protocol::{GuestNet, Link, RunSpec, Share as GuestShare, ShareFs};

/// Where the agent mounts the share of policy bind (or pool share) number `i`.
pub(super) fn share_dir(i: usize) -> PathBuf {
    PathBuf::from(format!("/run/sandbox/share/{i}"))
}

/// Where one bind source is in the guest, and the share that makes it so when a new one is needed.
pub(super) type Placed = (PathBuf, Option<GuestShare>);

/// The run specification of `launch` on top of `base` (its shares and links): every bind source checked
/// and resolved, then put in the guest by `place(bind number, source, resolved source, writable)`.
pub(super) fn run_spec(
    launch: &Launch<'_>,
    base: RunSpec,
    mut place: impl FnMut(usize, &Path, PathBuf, bool) -> Result<Placed, VmError>,
) -> Result<RunSpec, VmError> {
    // A warm VM of a pool without user networking has no user-mode stack to connect (a VM of its own, or
    // of a pool with it, comes with its `net`): refused, rather than a run without the network it asked for.
    if launch.policy.network == Network::User && base.net.is_none() {
        return Err(VmError::PoolNetwork);
    }
    let mut spec = base;
    let mut policy = launch.policy.clone();
    for (i, m) in policy.mounts.iter_mut().enumerate() {
        let (src, writable) = match m {
            Mount::RoBind { src, .. } => (src, false),
            Mount::Bind { src, .. } => (src, true),
            Mount::Tmpfs { .. } => continue,
        };
        // The same refusal as the namespace backend's: no symlink planted by a sandbox (or another user) is
        // followed to pick what the guest sees.
        crate::namespace::plan::check_links(src)?;
        let real = std::fs::canonicalize(&*src).map_err(|source| VmError::BindSource {
            path: src.clone(),
            source,
        })?;
        let (at, share) = place(i, src, real, writable)?;
        spec.shares.extend(share);
        *src = at;
    }
    // A root of its own, resolved on the host into its layers (`on_root`): each placed like a read-only bind
    // (a share of its own, or a path in a pool's share), stacked by the agent's sandbox.
    if let Some(root) = &mut policy.rootfs {
        if root.upper.is_some() {
            return Err(VmError::RootfsUpper);
        }
        if root.dir.is_some() || root.image.is_some() {
            return Err(VmError::Rootfs);
        }
        let first = policy.mounts.len();
        for (j, layer) in root.layers.iter_mut().enumerate() {
            let real = layer.clone();
            let (at, share) = place(first + j, layer, real, false)?;
            spec.shares.extend(share);
            *layer = at;
        }
        policy.system = false;
    }
    // Inside the guest the agent is root: the sandbox maps a whole range of the guest's ids, or, with
    // `ids = "single"`, the guest's nobody.
    policy.host_uid = 65534;
    policy.host_gid = 65534;
    let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    spec.program = text(launch.program);
    spec.arg0 = launch.arg0.map(text);
    spec.args = launch.args.iter().map(|a| text(a)).collect();
    spec.env = launch.env.iter().map(|(k, v)| (text(k), text(v))).collect();
    spec.cwd = launch.cwd.map(Path::to_path_buf);
    spec.policy = policy;
    spec.validate().map_err(VmError::Spec)?;
    Ok(spec)
}

/// A root of its own for a VM run: resolved on the host (the image checked out, its layers held while the
/// returned root lives; its config applied), the policy's root then its layers (`Rootfs::layers`), which
/// [`run_spec`] places as read-only shares. `None`s without one.
pub(super) fn on_root(launch: &Launch<'_>) -> Result<(Option<Root>, Option<Applied>), VmError> {
    if launch.policy.rootfs.is_none() {
        return Ok((None, None));
    }
    if launch
        .policy
        .rootfs
        .as_ref()
        .is_some_and(|r| r.upper.is_some())
    {
        return Err(VmError::RootfsUpper);
    }
    let root = crate::namespace::rootfs::resolve(launch.policy, false)
        .map_err(VmError::Confine)?
        .expect("the policy has a root");
    let applied = root.apply(launch).map_err(VmError::Confine)?;
    Ok((Some(root), Some(applied)))
}

/// Completes the guest's report of a root with what only the host knows (the image, its id and digest, the
/// user as the image named it).
pub(super) fn report_root(outcome: &mut Outcome, root: Option<&Root>) {
    if let Some(root) = root {
        let guest = outcome.enforced.rootfs.take().unwrap_or_default();
        outcome.enforced.rootfs = Some(RootfsEnforced {
            writable: guest.writable,
            idmapped: false,
            ..root.report.clone()
        });
    }
}

/// The guest's run specification for a VM of its own, and the shares the VMM must export for it (on a
/// guest that mounts them with `fs`).
pub(super) fn guest_spec(
    launch: &Launch<'_>,
    fs: ShareFs,
    net: Option<GuestNet>,
) -> Result<(RunSpec, Vec<Share>), VmError> {
    spec_and_shares(launch, fs, false, net)
}

/// Like [`guest_spec`], for a session ([`RunSpec::session`]: the launch has no program).
pub(super) fn session_spec(
    launch: &Launch<'_>,
    fs: ShareFs,
    net: Option<GuestNet>,
) -> Result<(RunSpec, Vec<Share>), VmError> {
    spec_and_shares(launch, fs, true, net)
}

fn spec_and_shares(
    launch: &Launch<'_>,
    fs: ShareFs,
    session: bool,
    net: Option<GuestNet>,
) -> Result<(RunSpec, Vec<Share>), VmError> {
    let mut shares = Vec::new();
    let mut base = RunSpec {
        program: String::new(),
        arg0: None,
        args: Vec::new(),
        env: Default::default(),
        cwd: None,
        policy: Policy::default(),
        shares: Vec::new(),
        links: Vec::new(),
        serve: false,
        session,
        net,
        end_mark: None,
    };
    let share = |tag: String, host: PathBuf, guest: PathBuf, readonly: bool| {
        let guest = GuestShare {
            tag: tag.clone(),
            guest_path: guest,
            fs,
            readonly,
        };
        let host = Share {
            tag,
            path: host,
            readonly,
        };
        (host, guest)
    };
    // With a root of its own the guest needs no system of the host's.
    if launch.policy.system && launch.policy.rootfs.is_none() {
        // The guest's system is the host's, read-only: /usr and /etc (as the VMM's own sandbox shows it,
        // i.e. only the entries programs need), plus the top-level links or directories.
        for (i, name) in SYSTEM_TOP.iter().enumerate() {
            let host = Path::new("/").join(name);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target =
                        std::fs::read_link(&host).map_err(|source| VmError::SystemLink {
                            path: host.clone(),
                            source,
                        })?;
                    base.links.push(Link { path: host, target });
                }
                Ok(m) if m.is_dir() => {
                    let (h, g) = share(format!("sys{i}"), host.clone(), host, true);
                    shares.push(h);
                    base.shares.push(g);
                }
                _ => {}
            }
        }
        let (h, g) = share("etc".into(), "/etc".into(), "/etc".into(), true);
        shares.push(h);
        base.shares.push(g);
    }
    let spec = run_spec(launch, base, |i, _, real, writable| {
        // 9p shares directories: a file is reached through its directory.
        let (dir, rest) = if real.is_dir() {
            (real.clone(), PathBuf::new())
        } else {
            let parent = real.parent().unwrap_or(Path::new("/")).to_path_buf();
            (parent, PathBuf::from(real.file_name().unwrap_or_default()))
        };
        let (h, g) = share(format!("b{i}"), dir, share_dir(i), !writable);
        shares.push(h);
        Ok((share_dir(i).join(rest), Some(g)))
    })?;
    Ok((spec, shares))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rootfs;

    /// `/bin/true` under `policy`, with the host's streams.
    fn true_on(policy: &Policy) -> Launch<'_> {
        static PROGRAM: std::sync::LazyLock<std::ffi::OsString> =
            std::sync::LazyLock::new(|| "/bin/true".into());
        Launch {
            serve: None,
            program: &PROGRAM,
            arg0: None,
            args: &[],
            env: &[],
            cwd: None,
            policy,
            stdio: [-1; 3],
            extra_fds: &[],
            guest: false,
        }
    }

    #[test]
    fn binds_are_placed_by_the_caller_and_the_sandbox_is_the_guests_nobody() {
        let dir = std::env::temp_dir().join(format!("sandbox-run-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = Policy::default().bind(&dir, "/data").tmpfs("/scratch");
        let launch = true_on(&policy);
        let real = dir.canonicalize().unwrap();
        let base = guest_spec(&launch, ShareFs::Virtiofs, None).unwrap().0;
        let mut seen = Vec::new();
        let spec = run_spec(&launch, base.clone(), |i, _, real, writable| {
            seen.push((i, real, writable));
            Ok((share_dir(7).join("x"), None))
        });
        let refused = run_spec(&launch, base.clone(), |_, src, _, writable| {
            Err(VmError::NotInPoolShare {
                path: src.to_path_buf(),
                writable,
            })
        });
        std::fs::remove_dir_all(&dir).unwrap();
        let spec = spec.unwrap();
        assert_eq!(seen, [(0, real, true)]);
        assert_eq!(spec.policy.mounts[0].dst(), Path::new("/data"));
        assert!(
            matches!(&spec.policy.mounts[0], Mount::Bind { src, .. } if src == Path::new("/run/sandbox/share/7/x"))
        );
        assert_eq!((spec.policy.host_uid, spec.policy.host_gid), (65534, 65534));
        assert_eq!(spec.shares, base.shares);
        assert!(spec.shares.iter().all(|s| s.fs == ShareFs::Virtiofs));
        assert!(matches!(
            refused,
            Err(VmError::NotInPoolShare { writable: true, .. })
        ));
    }

    #[test]
    fn user_networking_needs_the_guests_link() {
        let policy = Policy::default().network(Network::User);
        let launch = true_on(&policy);
        // A warm VM's spec (no link of its own): refused, with the way out.
        let err = guest_spec(&launch, ShareFs::Virtiofs, None).unwrap_err();
        assert!(matches!(err, VmError::PoolNetwork), "{err}");
        assert!(
            err.to_string()
                .contains("needs a pool made with user networking (PoolOptions::user_network"),
            "{err}"
        );
        // A cold run's spec carries its link to the agent.
        let net = GuestNet {
            address: [10, 77, 0, 1].into(),
            prefix: 24,
            gateway: [10, 77, 0, 254].into(),
        };
        let spec = guest_spec(&launch, ShareFs::NineP, Some(net)).unwrap().0;
        assert_eq!(spec.net, Some(net));
        assert_eq!(spec.policy.network, Network::User);
    }

    #[test]
    fn a_root_of_its_own_becomes_read_only_layer_shares_and_no_system_view() {
        let dir =
            std::env::temp_dir().join(format!("sandbox-run-spec-root-{}", std::process::id()));
        let (top, base) = (dir.join("top"), dir.join("base"));
        std::fs::create_dir_all(&top).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let (top, base) = (top.canonicalize().unwrap(), base.canonicalize().unwrap());
        // A root as the host resolved it (`on_root`): its layers.
        let policy = Policy::default().rootfs(Rootfs {
            layers: vec![top.clone(), base.clone()],
            ..Rootfs::default()
        });
        let launch = true_on(&policy);
        let (spec, shares) = guest_spec(&launch, ShareFs::NineP, None).unwrap();
        let hosts: Vec<(&str, &Path, bool)> = shares
            .iter()
            .map(|s| (s.tag.as_str(), s.path.as_path(), s.readonly))
            .collect();
        assert_eq!(hosts, [("b0", &*top, true), ("b1", &*base, true)]);
        let layers = &spec.policy.rootfs.as_ref().unwrap().layers;
        assert_eq!(layers, &[share_dir(0), share_dir(1)]);
        assert!(spec.shares.iter().all(|s| s.readonly));
        assert!(!spec.policy.system, "no system view of the host's");
        // Only a resolved root reaches the guest; a kept upper layer cannot be on a share.
        let unresolved = Policy::default().rootfs(Rootfs::image("app:1"));
        let err = guest_spec(
            &Launch {
                serve: None,
                policy: &unresolved,
                ..launch
            },
            ShareFs::NineP,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, VmError::Rootfs), "{err}");
        let upper = Policy::default().rootfs(
            Rootfs {
                layers: vec![top.clone()],
                ..Rootfs::default()
            }
            .upper("/srv/u"),
        );
        let err = guest_spec(
            &Launch {
                serve: None,
                policy: &upper,
                ..launch
            },
            ShareFs::NineP,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, VmError::RootfsUpper), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

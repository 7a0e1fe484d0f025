//! `Policy`'s builder methods: each sets one part of the policy and returns it.

use std::path::PathBuf;
use std::time::Duration;

use super::{IdMapping, Mount, Network, Policy, Publish, Rootfs, SeccompProfile};

impl Policy {
    /// Adds a read-only bind of host `src` at `dst`.
    pub fn ro_bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.mounts.push(Mount::RoBind {
            src: src.into(),
            dst: dst.into(),
        });
        self
    }

    /// Adds a read-write bind of host `src` at `dst`.
    pub fn bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Self {
        self.mounts.push(Mount::Bind {
            src: src.into(),
            dst: dst.into(),
        });
        self
    }

    /// Hides `path` inside the sandbox (see [`Policy::masked_paths`]).
    pub fn mask(mut self, path: impl Into<PathBuf>) -> Self {
        self.masked_paths.push(path.into());
        self
    }

    /// Makes `path` inside the sandbox read-only (see [`Policy::readonly_paths`]).
    pub fn read_only_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.readonly_paths.push(path.into());
        self
    }

    /// Adds an empty tmpfs at `dst`.
    pub fn tmpfs(mut self, dst: impl Into<PathBuf>) -> Self {
        self.mounts.push(Mount::Tmpfs {
            dst: dst.into(),
            size: None,
        });
        self
    }

    /// Adds an empty tmpfs of at most `size` bytes at `dst`.
    pub fn tmpfs_sized(mut self, dst: impl Into<PathBuf>, size: u64) -> Self {
        self.mounts.push(Mount::Tmpfs {
            dst: dst.into(),
            size: Some(size),
        });
        self
    }

    /// Sets the hostname.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    /// Sets the network access.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Publishes a port of the sandbox on the host (needs [`Network::User`]).
    pub fn publish(mut self, publish: Publish) -> Self {
        self.publish.push(publish);
        self
    }

    /// Sets the wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Limits the memory of the whole tree (bytes, swap included).
    pub fn memory(mut self, bytes: u64) -> Self {
        self.limits.memory = Some(bytes);
        self
    }

    /// Limits the number of processes and threads of the whole tree.
    pub fn pids(mut self, n: u64) -> Self {
        self.limits.pids = Some(n);
        self
    }

    /// Limits CPU bandwidth to this many cores.
    pub fn cpus(mut self, cores: f64) -> Self {
        self.limits.cpus = Some(cores);
        self
    }

    /// Limits the CPU time of each process.
    pub fn cpu_time(mut self, t: Duration) -> Self {
        self.limits.cpu_time = Some(t);
        self
    }

    /// Sets the seccomp profile.
    pub fn seccomp(mut self, profile: SeccompProfile) -> Self {
        self.seccomp = profile;
        self
    }

    /// Uses a root filesystem of its own instead of the host system view (see [`Rootfs`]).
    pub fn rootfs(mut self, rootfs: Rootfs) -> Self {
        self.rootfs = Some(rootfs);
        self
    }

    /// Sets the user and group ids the program runs as inside the sandbox.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the program's supplementary groups inside the sandbox (see [`Policy::groups`]).
    pub fn groups(mut self, groups: impl IntoIterator<Item = u32>) -> Self {
        self.groups = groups.into_iter().collect();
        self
    }

    /// Sets which host ids the sandbox's user namespace maps.
    pub fn ids(mut self, ids: IdMapping) -> Self {
        self.ids = ids;
        self
    }
}

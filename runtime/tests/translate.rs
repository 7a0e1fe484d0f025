//! Real configs translated field by field: what `runc spec` and `runc spec --rootless` (runc 1.1.5, Debian
//! 12) write, and one shaped like podman's.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use sandkasten::seccomp::{Action, CmpOp, SeccompProfile};
use sandkasten::{Capability, IdMapping, Mount, Network, Policy, Rootfs};
use serde_json::json;

fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    list.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// `runc spec --rootless` run by uid 1000.
#[test]
fn runc_rootless_spec() {
    let (dir, t) = translate(&fixture("runc-spec-rootless.json"));
    let t = t.unwrap();
    let p = &t.policy;
    let root = dir.path().canonicalize().unwrap().join("rootfs");
    assert_eq!(p.rootfs, Some(Rootfs::dir(&root).read_only()));
    assert_eq!(p.hostname, "runc");
    // Every mount of runc's spec is a kernel filesystem: the sandbox's own, or (sysfs, mqueue, cgroup) absent.
    assert_eq!(p.mounts, vec![]);
    assert_noted(
        &t,
        &[
            "mounts at /proc, /dev, /dev/pts, /dev/shm",
            "the sandbox's own",
        ],
    );
    assert_noted(&t, &["mounts[5] (sysfs at /sys) is not made"]);
    assert_noted(&t, &["mounts[4] (mqueue at /dev/mqueue) is not made"]);
    assert_noted(&t, &["mounts[6] (cgroup at /sys/fs/cgroup) is not made"]);
    // No network namespace listed: the host's network.
    assert_eq!(p.network, Network::Host);
    assert_eq!(t.netns_path, None);
    assert_noted(&t, &["does not list cgroup,", "always creates anew"]);
    // containerID 0 -> hostID 1000, size 1: one id, the caller's.
    assert_eq!(p.ids, IdMapping::Single);
    assert_eq!((p.host_uid, p.host_gid), (1000, 1000));
    assert_eq!((p.uid, p.gid), (0, 0));
    // CAP_AUDIT_WRITE is not one the sandbox keeps.
    assert_eq!(
        p.capabilities,
        vec![Capability::Kill, Capability::NetBindService]
    );
    assert_noted(&t, &["the sandbox drops CAP_AUDIT_WRITE;"]);
    assert_eq!(p.limits.nofile, Some(1024));
    assert_eq!(p.limits.memory, None);
    assert_eq!(p.seccomp, SeccompProfile::Default);
    assert_noted(&t, &["linux.seccomp is absent"]);
    assert!(t.terminal);
    assert!(!t.vm);
    assert_eq!(t.process.args, ["sh"]);
    assert_eq!(
        t.process.env,
        pairs(&[
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ),
            ("TERM", "xterm"),
        ])
    );
    assert_eq!(t.process.cwd, Path::new("/"));
    assert!(t.process.no_new_privileges);
    assert!(!noted(&t, &["noNewPrivileges"]));
    assert_eq!(t.process.rlimits.len(), 1);
    assert_eq!(t.policy.masked_paths.len(), 10);
    assert!(
        t.policy
            .masked_paths
            .contains(&PathBuf::from("/proc/kcore"))
    );
    assert_eq!(t.policy.readonly_paths.len(), 5);
    assert_eq!(t.hooks, Default::default());
    assert!(
        t.notes
            .iter()
            .all(|n| n.ends_with('.') && !n.contains('\n')),
        "{:#?}",
        t.notes
    );
}

/// `runc spec` (for a root runtime): no user namespace asked, a network namespace of its own, a devices rule.
#[test]
fn runc_spec() {
    let (_dir, t) = translate(&fixture("runc-spec.json"));
    let t = t.unwrap();
    assert_eq!(t.policy.network, Network::None);
    assert_eq!(t.policy.ids, IdMapping::Auto);
    assert_noted(&t, &["does not list user, cgroup,", "always creates anew"]);
    // A deny-all devices rule is what the fixed /dev does anyway: no note.
    assert!(!noted(&t, &["linux.resources.devices"]), "{:#?}", t.notes);
    assert_eq!(t.policy.mounts, vec![]);
}

/// The same, through `runc spec --rootless` of the installed runc, when there is one.
#[test]
fn installed_runc_spec() {
    let dir = testkit::TempDir::new("runc-spec");
    let ran = std::process::Command::new("runc")
        .args(["spec", "--rootless"])
        .current_dir(dir.path())
        .status();
    if !ran.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: `runc spec --rootless` did not run (install runc); the fixtures are tested anyway"
        );
        return;
    }
    std::fs::create_dir(dir.join("rootfs")).unwrap();
    let t = translate_dir(dir.path()).unwrap();
    assert_eq!(t.policy.network, Network::Host);
    assert_eq!(t.process.args, ["sh"]);
    assert_eq!(t.policy.mounts, vec![]);
}

/// A config as podman writes it: binds of its own files, a network namespace to join, default capabilities.
#[test]
fn podman_shaped() {
    let dir = testkit::TempDir::new("podman-bundle");
    std::fs::create_dir(dir.join("rootfs")).unwrap();
    let config = podman_config(dir.path(), small_seccomp());
    dir.write("config.json", serde_json::to_vec(&config).unwrap());
    let t = translate_dir(dir.path()).unwrap();
    let p = &t.policy;
    let data = |name: &str| dir.join("userdata").join(name);

    assert_eq!(p.rootfs, Some(Rootfs::dir(dir.join("rootfs"))));
    assert_noted(&t, &["root.readonly is false"]);
    assert_eq!(p.hostname, "7d1c0b3e1a2f");
    let bind = |src: PathBuf, dst: &str| Mount::Bind {
        src,
        dst: dst.into(),
    };
    assert_eq!(
        p.mounts,
        vec![
            bind(data("resolv.conf"), "/etc/resolv.conf"),
            bind(data("hosts"), "/etc/hosts"),
            bind(data("shm"), "/dev/shm"),
            bind(data("hostname"), "/etc/hostname"),
            bind(data(".containerenv"), "/run/.containerenv"),
        ]
    );
    assert_noted(&t, &["mounts[7] (/dev/shm): noexec is not applied"]);
    assert_noted(
        &t,
        &["mounts at /proc, /dev, /dev/pts are the sandbox's own"],
    );
    assert!(!noted(&t, &["also mounts"]), "{:#?}", t.notes);
    // A network namespace to join, and a namespace that is not the host's meanwhile.
    assert_eq!(p.network, Network::None);
    assert_eq!(
        t.netns_path.as_deref(),
        Some(Path::new("/run/netns/netns-4d1e2c3b"))
    );
    assert_noted(&t, &["does not list user,"]);
    assert_eq!(p.ids, IdMapping::Auto);
    // podman's default set: all but CAP_SETFCAP and CAP_SETPCAP kept, without an error.
    assert_eq!(p.capabilities, Capability::ALL.to_vec());
    assert_noted(&t, &["the sandbox drops CAP_SETFCAP, CAP_SETPCAP;"]);
    assert_eq!(p.limits.nofile, Some(1_048_576));
    assert_eq!(p.limits.nproc, Some(4_194_304));
    assert_eq!(p.limits.pids, Some(2048));
    assert_eq!(
        (p.limits.memory, p.limits.cpus, p.limits.cpu_time),
        (None, None, None)
    );
    assert_noted(
        &t,
        &["linux.sysctl (net.ipv4.ip_unprivileged_port_start, net.ipv4.ping_group_range)"],
    );
    assert_noted(&t, &["linux.cgroupsPath is not used"]);
    // Applied for a root caller (a range of its own); noted for an unprivileged one.
    if testkit::is_root() {
        assert_eq!(t.policy.groups, t.process.additional_gids);
    } else {
        assert_noted(&t, &["additionalGids"]);
        assert!(t.policy.groups.is_empty());
    }
    assert_noted(&t, &["umask 0022"]);
    assert_noted(&t, &["process.oomScoreAdj (0)"]);
    assert_noted(&t, &["process.noNewPrivileges is false"]);
    assert!(!t.process.no_new_privileges);
    assert_eq!(t.process.additional_gids.len(), 11);
    assert_eq!(t.process.args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(t.process.env[2], ("container".into(), "podman".into()));
    assert!(!t.terminal && !t.vm);
    assert_eq!(t.policy.masked_paths.len(), 11);
    assert_eq!(t.policy.readonly_paths[4], Path::new("/proc/sys"));

    // The profile: default ENOSYS, clone only without namespace flags.
    let SeccompProfile::Custom(profile) = &p.seccomp else {
        panic!("custom profile expected, got {:?}", p.seccomp)
    };
    assert_eq!(
        (profile.default_action, profile.default_errno),
        (Action::Errno, Some(38))
    );
    let clone = profile.rules.iter().find(|r| r.syscall == "clone").unwrap();
    assert_eq!(clone.action, Action::Allow);
    assert_eq!(clone.args.len(), 1);
    let cond = &clone.args[0];
    assert_eq!((cond.index, cond.op, cond.bits), (0, CmpOp::MaskedEq, 64));
    assert_eq!((cond.mask, cond.value), (Some(0x7E02_0000), 0));
    assert_eq!(
        profile
            .rules
            .iter()
            .filter(|r| r.syscall == "personality")
            .count(),
        2
    );
    assert!(!profile.rules.iter().any(|r| r.syscall == "_llseek"));
    assert_noted(
        &t,
        &["system calls x86_64 does not have (3: _llseek, arm_fadvise64_64, bdflush)"],
    );
    assert_noted(&t, &["calls of SCMP_ARCH_X86, SCMP_ARCH_X32 are killed"]);
    // No two errnos for one call: denials stay counted.
    assert!(p.audit_denials);
    assert!(sandkasten::seccomp::compile(&p.seccomp, true).is_ok());
}

/// Resources, rlimits and the backend annotation.
#[test]
fn resources_rlimits_and_backend() {
    let mut config = minimal();
    config["annotations"] = json!({"run.oci.sandbox.backend": "vm"});
    config["process"]["rlimits"] = json!([
        {"type": "RLIMIT_CPU", "soft": 30, "hard": 60},
        {"type": "RLIMIT_FSIZE", "soft": 1048576, "hard": 1048576},
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 4096},
        {"type": "RLIMIT_NPROC", "soft": 18446744073709551615u64, "hard": 18446744073709551615u64},
        {"type": "RLIMIT_MEMLOCK", "soft": 65536, "hard": 65536},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]);
    config["linux"] = json!({
        "resources": {
            "memory": {"limit": 268435456, "swap": 536870912, "reservation": 1000},
            "cpu": {"quota": 50000, "period": 100000, "shares": 1024, "cpus": "0-1"},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}],
        },
        "namespaces": [{"type": "network"}, {"type": "user"}, {"type": "pid"}, {"type": "mount"},
                       {"type": "ipc"}, {"type": "uts"}, {"type": "cgroup"}, {"type": "time"}],
        "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}, {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
        "rootfsPropagation": "rslave",
    });
    let (_dir, t) = translate(&config);
    let t = t.unwrap();
    let l = &t.policy.limits;
    assert!(t.vm);
    assert_eq!(l.cpu_time, Some(Duration::from_secs(30)));
    assert_eq!(l.fsize, Some(1 << 20));
    assert_eq!(l.nofile, Some(512));
    assert_eq!(l.nproc, None);
    assert_eq!(l.memory, Some(256 << 20));
    assert_eq!(l.cpus, Some(0.5));
    assert_eq!(l.pids, Some(64));
    assert_eq!(t.policy.network, Network::None);
    assert_eq!(
        t.policy.ids,
        IdMapping::Range {
            uid: 200_000,
            gid: 300_000,
            count: 65536
        }
    );
    assert_noted(
        &t,
        &["RLIMIT_NOFILE: the hard limit 4096 is lowered to the soft limit 512"],
    );
    assert_noted(&t, &["RLIMIT_MEMLOCK is not applied"]);
    assert_noted(
        &t,
        &["RLIMIT_CORE is not applied: core dumps are always off"],
    );
    assert_noted(
        &t,
        &["linux.resources.memory.swap (536870912) is not applied"],
    );
    assert_noted(&t, &["linux.resources.memory.reservation (1000)"]);
    assert_noted(&t, &["linux.resources.cpu.shares (1024) is not applied"]);
    assert_noted(&t, &["linux.resources.cpu.cpus (0-1)"]);
    assert_noted(&t, &["linux.resources.blockIO"]);
    assert_noted(
        &t,
        &[
            "linux.resources.devices (allow rules: 1)",
            "fixed minimal set",
        ],
    );
    assert_noted(&t, &["linux.devices are not created (/dev/fuse)"]);
    assert_noted(&t, &["linux.namespaces time is not created"]);
    assert_noted(&t, &["linux.rootfsPropagation (rslave)"]);
    assert!(!noted(&t, &["always creates anew"]), "{:#?}", t.notes);
    let policy: &Policy = &t.policy;
    assert!(policy.validate().is_ok());
}

/// Binds (relative sources against the bundle, ro), tmpfs sizes, hooks, a second backend annotation.
#[test]
fn mounts_and_hooks() {
    let mut config = minimal();
    config["mounts"] = json!([
        {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro", "nosuid", "nodev"]},
        {"destination": "/work", "type": "none", "source": "data", "options": ["bind", "rw", "relatime"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=16m"]},
        {"destination": "/run", "type": "tmpfs", "options": ["size=50%", "tmpcopyup"]},
        {"destination": "/cache", "type": "tmpfs", "options": ["mode=755", "size=4096"]},
    ]);
    config["annotations"] = json!({"io.sandbox.backend": "namespace"});
    config["hooks"] = json!({
        "createRuntime": [{"path": "/usr/bin/netns-hook", "args": ["netns-hook", "up"], "env": ["A=1"], "timeout": 5}],
        "poststop": [{"path": "/bin/true"}],
        "prestart": [{"path": "/bin/echo"}],
    });
    let dir = bundle(&config);
    std::fs::create_dir(dir.join("data")).unwrap();
    let t = translate_dir(dir.path()).unwrap();
    let data = dir.path().canonicalize().unwrap().join("data");
    assert_eq!(
        t.policy.mounts,
        vec![
            Mount::RoBind {
                src: data.clone(),
                dst: "/data".into()
            },
            Mount::Bind {
                src: data,
                dst: "/work".into()
            },
            Mount::Tmpfs {
                dst: "/tmp".into(),
                size: Some(16 << 20)
            },
            Mount::Tmpfs {
                dst: "/run".into(),
                size: None
            },
            Mount::Tmpfs {
                dst: "/cache".into(),
                size: Some(4096)
            },
        ]
    );
    assert_noted(&t, &["mounts[2] (/tmp): mode=1777 is not applied"]);
    assert_noted(&t, &["mounts[3] (/run): size=50% is not applied"]);
    assert_noted(&t, &["mounts[3] (/run): tmpcopyup is not applied"]);
    assert!(!noted(&t, &["mounts[4]"]), "{:#?}", t.notes);
    assert!(!t.vm);
    let hook = &t.hooks.create_runtime[0];
    assert_eq!(hook.path, Path::new("/usr/bin/netns-hook"));
    assert_eq!(hook.args, ["netns-hook", "up"]);
    assert_eq!(hook.env, pairs(&[("A", "1")]));
    assert_eq!(hook.timeout, Some(Duration::from_secs(5)));
    assert_eq!(t.hooks.poststop[0].path, Path::new("/bin/true"));
    assert_eq!(t.hooks.prestart.len(), 1);
    assert!(t.hooks.start_container.is_empty());
}

/// No `linux` at all: nothing listed, so the host's network and no masked paths, the rest created anyway.
#[test]
fn without_linux() {
    let (_dir, t) = translate(&minimal());
    let t = t.unwrap();
    assert_eq!(t.policy.network, Network::Host);
    assert!(t.policy.masked_paths.is_empty() && t.policy.readonly_paths.is_empty());
    assert_noted(&t, &["does not list pid, mount, ipc, uts, user, cgroup,"]);
    assert_eq!(t.policy.seccomp, SeccompProfile::Default);
    assert_eq!(t.policy.rootfs.as_ref().map(|r| r.read_only), Some(true));
}

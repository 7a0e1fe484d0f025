//! Bundles for the tests: a temporary directory with `rootfs/` and a `config.json`.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};

use sandbox_runtime::{SpecError, Translated};
use serde_json::{Value, json};
use testkit::TempDir;

/// A bundle directory holding `rootfs/` and `config` as `config.json`.
pub fn bundle(config: &Value) -> TempDir {
    let dir = TempDir::new("oci-bundle");
    std::fs::create_dir(dir.join("rootfs")).unwrap();
    dir.write("config.json", serde_json::to_vec_pretty(config).unwrap());
    dir
}

/// Loads and translates the bundle at `dir`.
pub fn translate_dir(dir: &Path) -> Result<Translated, SpecError> {
    sandbox_runtime::load(dir)?.translate()
}

/// Writes `config` as a bundle and translates it.
pub fn translate(config: &Value) -> (TempDir, Result<Translated, SpecError>) {
    let dir = bundle(config);
    let result = translate_dir(dir.path());
    (dir, result)
}

/// A fixture of `tests/fixtures/`, built into the test binary (which also runs as an unprivileged user, away
/// from the source tree).
pub fn fixture(name: &str) -> Value {
    let text = match name {
        "runc-spec.json" => include_str!("../fixtures/runc-spec.json"),
        "runc-spec-rootless.json" => include_str!("../fixtures/runc-spec-rootless.json"),
        _ => panic!("no fixture {name}"),
    };
    serde_json::from_str(text).unwrap()
}

/// The smallest config that translates: `sh` in `rootfs/`.
pub fn minimal() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/", "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
    })
}

/// Whether some note contains all of `words`.
pub fn noted(t: &Translated, words: &[&str]) -> bool {
    t.notes.iter().any(|n| words.iter().all(|w| n.contains(w)))
}

/// Panics with the notes unless some note contains all of `words`.
pub fn assert_noted(t: &Translated, words: &[&str]) {
    assert!(noted(t, words), "no note with {words:?} in {:#?}", t.notes);
}

/// The capabilities podman gives a container by default.
pub const PODMAN_CAPS: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// The seccomp profile file of Debian's containers-common, which podman reads.
pub const PODMAN_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// `linux.seccomp` as podman writes it into config.json from its profile file on x86_64 with `caps`: the
/// entries whose `includes` hold (every capability granted, the architecture listed) and whose `excludes` do
/// not (no capability granted, the architecture not listed); the architectures of x86_64's `archMap` entry.
/// `None` when the file is absent.
pub fn podman_seccomp(caps: &[&str]) -> Option<Value> {
    let text = std::fs::read(PODMAN_SECCOMP).ok()?;
    let file: Value = serde_json::from_slice(&text).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        let list = v.as_array().into_iter().flatten();
        list.filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let has_cap = |c: &String| caps.contains(&c.as_str());
    let mut syscalls = Vec::new();
    for entry in file["syscalls"].as_array().unwrap() {
        let (inc, exc) = (&entry["includes"], &entry["excludes"]);
        let inc_arches = strings(&inc["arches"]);
        if !inc_arches.is_empty() && !inc_arches.iter().any(|a| a == "amd64") {
            continue;
        }
        if !strings(&inc["caps"]).iter().all(has_cap) {
            continue;
        }
        if strings(&exc["arches"]).iter().any(|a| a == "amd64")
            || strings(&exc["caps"]).iter().any(has_cap)
        {
            continue;
        }
        let mut rule = json!({"names": entry["names"], "action": entry["action"]});
        if let Some(errno) = entry.get("errnoRet").filter(|e| !e.is_null()) {
            rule["errnoRet"] = errno.clone();
        }
        if let Some(args) = entry
            .get("args")
            .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        {
            rule["args"] = args.clone();
        }
        syscalls.push(rule);
    }
    let x86 = file["archMap"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["architecture"] == "SCMP_ARCH_X86_64")
        .unwrap();
    let mut arches = vec![x86["architecture"].clone()];
    arches.extend(x86["subArchitectures"].as_array().unwrap().iter().cloned());
    let mut seccomp = json!({
        "defaultAction": file["defaultAction"],
        "architectures": arches,
        "syscalls": syscalls,
    });
    if let Some(errno) = file.get("defaultErrnoRet") {
        seccomp["defaultErrnoRet"] = errno.clone();
    }
    Some(seccomp)
}

/// A config shaped like the one `podman run` (4.x, as root) writes for `sh -c 'echo hi'`, with its files in
/// `userdata/` of `dir` and `seccomp` as its profile.
pub fn podman_config(dir: &Path, seccomp: Value) -> Value {
    let userdata = dir.join("userdata");
    std::fs::create_dir_all(userdata.join("shm")).unwrap();
    for file in ["resolv.conf", "hosts", "hostname", ".containerenv"] {
        std::fs::write(userdata.join(file), "").unwrap();
    }
    let data = |name: &str| -> PathBuf { userdata.join(name) };
    let caps = json!(PODMAN_CAPS);
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0, "umask": 18, "additionalGids": [0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27]},
            "args": ["/bin/sh", "-c", "echo hi"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
                "container=podman",
                "HOME=/root",
                "HOSTNAME=7d1c0b3e1a2f",
            ],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
                {"type": "RLIMIT_NPROC", "hard": 4194304, "soft": 4194304},
            ],
            "oomScoreAdj": 0,
        },
        "root": {"path": dir.join("rootfs")},
        "hostname": "7d1c0b3e1a2f",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": data("resolv.conf"), "options": ["bind", "rprivate"]},
            {"destination": "/etc/hosts", "type": "bind", "source": data("hosts"), "options": ["bind", "rprivate"]},
            {"destination": "/dev/shm", "type": "bind", "source": data("shm"),
             "options": ["bind", "rprivate", "nosuid", "noexec", "nodev"]},
            {"destination": "/etc/hostname", "type": "bind", "source": data("hostname"), "options": ["bind", "rprivate"]},
            {"destination": "/run/.containerenv", "type": "bind", "source": data(".containerenv"),
             "options": ["bind", "rprivate"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "annotations": {
            "io.container.manager": "libpod",
            "io.podman.annotations.autoremove": "TRUE",
            "org.opencontainers.image.stopSignal": "15",
        },
        "linux": {
            "sysctl": {"net.ipv4.ping_group_range": "0 0", "net.ipv4.ip_unprivileged_port_start": "0"},
            "resources": {"devices": [{"allow": false, "access": "rwm"}], "pids": {"limit": 2048}},
            "cgroupsPath": "machine.slice:libpod:7d1c0b3e1a2f",
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/run/netns/netns-4d1e2c3b"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"},
            ],
            "seccomp": seccomp,
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/fs/selinux",
                "/sys/dev/block",
            ],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// A small profile in the manner of Docker's and podman's: deny by default with ENOSYS, allow the usual calls,
/// clone only without namespace flags (`SCMP_CMP_MASKED_EQ`), personality with the safe values only.
pub fn small_seccomp() -> Value {
    let allowed = [
        "read",
        "write",
        "close",
        "poll",
        "ppoll",
        "wait4",
        "kill",
        "rt_sigprocmask",
        "rt_sigaction",
        "rt_sigreturn",
        "restart_syscall",
        "setsid",
        "execve",
        "ioctl",
        "clock_gettime",
        "exit",
        "exit_group",
        "openat",
        "mmap",
        "brk",
        "arch_prctl",
        "socket",
        "_llseek",
        "arm_fadvise64_64",
    ];
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["kexec_load", "bdflush"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ],
    })
}

//! Bundles the translation refuses, each with its own error naming the field and the fix.

mod common;

use common::*;
use sandbox_runtime::SpecError;
use sandbox_runtime::spec::{LinuxError, MountError, ProcessError, SeccompError};
use serde_json::{Value, json};

/// Translates `config` (written as a bundle) and returns its error and message.
fn refused(config: &Value) -> (SpecError, String) {
    let (_dir, result) = translate(config);
    let e = result.expect_err("the config must be refused");
    let message = e.to_string();
    (e, message)
}

/// `minimal()` with `edit` applied.
fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut config = minimal();
    edit(&mut config);
    config
}

#[test]
fn the_minimal_config_translates() {
    let (_dir, t) = translate(&minimal());
    let t = t.unwrap();
    assert_eq!(t.process.args, ["sh"]);
}

#[test]
fn missing_config_json() {
    let dir = testkit::TempDir::new("oci-empty");
    let e = sandbox_runtime::load(dir.path()).unwrap_err();
    assert!(matches!(e, SpecError::NoConfig { .. }), "{e:?}");
    assert!(
        e.to_string().contains("config.json\" does not exist"),
        "{e}"
    );
    let e = sandbox_runtime::load(&dir.join("absent")).unwrap_err();
    assert!(matches!(e, SpecError::Bundle { .. }), "{e:?}");
}

#[test]
fn malformed_json() {
    let dir = testkit::TempDir::new("oci-bad-json");
    dir.write(
        "config.json",
        "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {\n}}}",
    );
    let e = sandbox_runtime::load(dir.path()).unwrap_err();
    let SpecError::Json { line, column, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!((*line, *column), (4, 3), "{e}");
}

#[test]
fn wrong_types_name_their_field() {
    let config = with(|c| {
        c["linux"] = json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write"], "action": "SCMP_ACT_BLOCK"}]}});
    });
    let (e, message) = refused(&config);
    let SpecError::Field { field, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(field, "linux.seccomp.syscalls[1]");
    assert!(message.contains("SCMP_ACT_BLOCK"), "{message}");

    let (e, _) = refused(&with(|c| {
        c["process"]["capabilities"] = json!({"bounding": ["CAP_FLY"]})
    }));
    assert!(
        matches!(&e, SpecError::Field { field, .. } if field == "process.capabilities"),
        "{e:?}"
    );
    let (e, _) = refused(&with(|c| {
        c["mounts"] = json!([{"destination": "/a", "options": "ro"}])
    }));
    assert!(
        matches!(&e, SpecError::Field { field, .. } if field == "mounts[0]"),
        "{e:?}"
    );
}

#[test]
fn other_major_version() {
    let (e, _) = refused(&with(|c| c["ociVersion"] = json!("2.0.0")));
    assert!(matches!(e, SpecError::Version(v) if v == "2.0.0"));
    let (e, _) = refused(&with(|c| c["ociVersion"] = json!("")));
    assert!(matches!(e, SpecError::Version(_)));
}

#[test]
fn missing_root_dir() {
    let (e, message) = refused(&with(|c| c["root"]["path"] = json!("no-such-rootfs")));
    assert!(matches!(e, SpecError::Root { .. }), "{e:?}");
    assert!(
        message.contains("no-such-rootfs") && message.contains("root.path"),
        "{message}"
    );
    let (e, _) = refused(&with(|c| {
        c.as_object_mut().unwrap().remove("root").map(drop).unwrap()
    }));
    assert!(matches!(e, SpecError::NoRoot), "{e:?}");
}

#[test]
fn process_errors() {
    let (e, message) = refused(&with(|c| c["process"]["args"] = json!([])));
    assert!(
        matches!(e, SpecError::Process(ProcessError::NoArgs)),
        "{e:?}"
    );
    assert!(message.contains("process.args"), "{message}");
    let (e, _) = refused(&with(|c| {
        c["process"]
            .as_object_mut()
            .unwrap()
            .remove("args")
            .map(drop)
            .unwrap()
    }));
    assert!(
        matches!(e, SpecError::Process(ProcessError::NoArgs)),
        "{e:?}"
    );

    let (e, message) = refused(&with(|c| c["process"]["cwd"] = json!("work")));
    assert!(
        matches!(e, SpecError::Process(ProcessError::RelativeCwd(_))),
        "{e:?}"
    );
    assert!(message.contains("process.cwd \"work\""), "{message}");

    let (e, message) = refused(&with(|c| c["process"]["env"] = json!(["A=1", "NOVALUE"])));
    assert!(
        matches!(e, SpecError::Process(ProcessError::BadEnv { index: 1, .. })),
        "{e:?}"
    );
    assert!(message.contains("process.env[1] \"NOVALUE\""), "{message}");

    let rlimit = json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
    let (e, _) = refused(&with(|c| c["process"]["rlimits"] = rlimit));
    assert!(
        matches!(e, SpecError::Process(ProcessError::Rlimit { .. })),
        "{e:?}"
    );
    let zero = json!([{"type": "RLIMIT_NOFILE", "soft": 0, "hard": 0}]);
    let (e, message) = refused(&with(|c| c["process"]["rlimits"] = zero));
    assert!(
        matches!(&e, SpecError::Invalid { field, .. } if field == "process.rlimits"),
        "{e:?}"
    );
    assert!(message.contains("nofile"), "{message}");
}

#[test]
fn mount_errors() {
    let mount = |m: Value| with(|c| c["mounts"] = json!([m]));
    let (e, message) = refused(&mount(
        json!({"destination": "/mnt", "type": "nfs", "source": "server:/x"}),
    ));
    assert!(
        matches!(
            e,
            SpecError::Mount(MountError::UnknownType { index: 0, .. })
        ),
        "{e:?}"
    );
    assert!(
        message.contains("mounts[0] (\"/mnt\")") && message.contains("\"nfs\""),
        "{message}"
    );

    let (e, message) = refused(&mount(
        json!({"destination": "/data", "type": "bind", "source": "/no/such/dir"}),
    ));
    assert!(
        matches!(e, SpecError::Mount(MountError::Source { .. })),
        "{e:?}"
    );
    assert!(
        message.contains("/no/such/dir") && message.contains("mounts[0].source"),
        "{message}"
    );

    let (e, _) = refused(&mount(json!({"destination": "/data", "type": "bind"})));
    assert!(
        matches!(e, SpecError::Mount(MountError::Source { .. })),
        "{e:?}"
    );

    let (e, _) = refused(&mount(json!({"destination": "data", "type": "tmpfs"})));
    assert!(
        matches!(e, SpecError::Mount(MountError::Destination { .. })),
        "{e:?}"
    );

    let (e, message) = refused(&mount(
        json!({"destination": "/t", "type": "tmpfs", "options": ["fancy"]}),
    ));
    assert!(
        matches!(e, SpecError::Mount(MountError::UnknownOption { .. })),
        "{e:?}"
    );
    assert!(
        message.contains("\"fancy\" is unknown for a tmpfs"),
        "{message}"
    );

    let (e, _) = refused(&mount(
        json!({"destination": "/t", "type": "tmpfs", "options": ["size=lots"]}),
    ));
    assert!(
        matches!(e, SpecError::Mount(MountError::BadSize { .. })),
        "{e:?}"
    );

    let (e, message) = refused(&mount(json!({"destination": "/", "type": "tmpfs"})));
    assert!(
        matches!(&e, SpecError::Invalid { field, .. } if field == "mounts[0]"),
        "{e:?}"
    );
    assert!(message.contains("destination"), "{message}");

    let (e, _) = refused(&mount(
        json!({"destination": "/p", "type": "proc", "source": "proc"}),
    ));
    assert!(
        matches!(
            e,
            SpecError::Mount(MountError::Misplaced { usual: "/proc", .. })
        ),
        "{e:?}"
    );

    let idmapped = json!({"destination": "/t", "type": "tmpfs", "options": ["idmap"]});
    let (e, message) = refused(&mount(idmapped));
    assert!(
        matches!(e, SpecError::Mount(MountError::Refused { .. })),
        "{e:?}"
    );
    assert!(message.contains("id-mapped"), "{message}");
}

#[test]
fn namespace_to_join() {
    let ns = json!([{"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "network"}]);
    let (e, message) = refused(&with(|c| c["linux"] = json!({"namespaces": ns})));
    assert!(
        matches!(&e, SpecError::Linux(LinuxError::NamespacePath { kind, .. }) if kind == "pid"),
        "{e:?}"
    );
    assert!(message.contains("/proc/1/ns/pid"), "{message}");
    let ns = json!([{"type": "mount", "path": "/proc/1/ns/mnt"}]);
    let (e, _) = refused(&with(|c| c["linux"] = json!({"namespaces": ns})));
    assert!(
        matches!(&e, SpecError::Linux(LinuxError::NamespacePath { kind, .. }) if kind == "mount"),
        "{e:?}"
    );
    let offsets = json!({"monotonic": {"secs": 10, "nanosecs": 0}});
    let (e, _) = refused(&with(|c| c["linux"] = json!({"timeOffsets": offsets})));
    assert!(
        matches!(e, SpecError::Linux(LinuxError::TimeOffsets)),
        "{e:?}"
    );
}

#[test]
fn seccomp_errors() {
    let seccomp = |s: Value| with(|c| c["linux"] = json!({"seccomp": s}));
    let notify = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]});
    let (e, message) = refused(&seccomp(notify));
    assert!(
        matches!(&e, SpecError::Seccomp(SeccompError::Refused { field, .. })
        if field == "linux.seccomp.syscalls[0].action"),
        "{e:?}"
    );
    assert!(message.contains("SCMP_ACT_NOTIFY"), "{message}");

    let listener = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"});
    let (e, _) = refused(&seccomp(listener));
    assert!(
        matches!(&e, SpecError::Seccomp(SeccompError::Refused { field, .. })
        if field == "linux.seccomp.listenerPath"),
        "{e:?}"
    );

    let errno0 = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0}]});
    let (e, _) = refused(&seccomp(errno0));
    assert!(
        matches!(&e, SpecError::Seccomp(SeccompError::Errno { field, errno: 0 })
        if field == "linux.seccomp.syscalls[0].errnoRet"),
        "{e:?}"
    );

    let arg6 = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"],
        "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]});
    let (e, _) = refused(&seccomp(arg6));
    assert!(
        matches!(
            e,
            SpecError::Seccomp(SeccompError::ArgIndex { index: 6, .. })
        ),
        "{e:?}"
    );

    // A profile that denies what the sandbox's init needs after installing the filter.
    let no_wait = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["wait4"], "action": "SCMP_ACT_ERRNO"}]});
    let (e, message) = refused(&seccomp(no_wait));
    assert!(
        matches!(e, SpecError::Seccomp(SeccompError::Compile(_))),
        "{e:?}"
    );
    assert!(message.contains("wait4"), "{message}");
}

#[test]
fn annotations_and_hooks() {
    let (e, message) = refused(&with(|c| {
        c["annotations"] = json!({"run.oci.sandbox.backend": "kvm"})
    }));
    assert!(matches!(e, SpecError::Backend { .. }), "{e:?}");
    assert!(message.contains("\"kvm\""), "{message}");
    let both = json!({"run.oci.sandbox.backend": "vm", "io.sandbox.backend": "namespace"});
    let (e, _) = refused(&with(|c| c["annotations"] = both));
    assert!(matches!(e, SpecError::Backend { .. }), "{e:?}");

    let (e, message) = refused(&with(|c| {
        c["hooks"] = json!({"poststop": [{"path": "cleanup.sh"}]})
    }));
    assert!(
        matches!(&e, SpecError::Hook { field, .. } if field == "hooks.poststop[0]"),
        "{e:?}"
    );
    assert!(message.contains("absolute"), "{message}");
    let (e, _) = refused(&with(|c| {
        c["hooks"] = json!({"poststart": [{"path": "/bin/true", "timeout": 0}]})
    }));
    assert!(matches!(e, SpecError::Hook { .. }), "{e:?}");
    let (e, _) = refused(&with(|c| {
        c["hooks"] = json!({"poststart": [{"path": "/bin/true", "env": ["=x"]}]})
    }));
    assert!(
        matches!(e, SpecError::Process(ProcessError::BadEnv { .. })),
        "{e:?}"
    );
}

#[test]
fn hostnames_and_ids() {
    let (e, _) = refused(&with(|c| c["hostname"] = json!("bad host")));
    assert!(
        matches!(&e, SpecError::Invalid { field, .. } if field == "hostname"),
        "{e:?}"
    );
    // A range that does not hold the process's user.
    let config = with(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        c["linux"] = json!({
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 1000}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 1000}],
        });
    });
    let (e, _) = refused(&config);
    assert!(
        matches!(&e, SpecError::Invalid { field, .. } if field == "linux.uidMappings"),
        "{e:?}"
    );
}

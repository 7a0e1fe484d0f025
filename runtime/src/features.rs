//! The runtime-spec `features.json` document (what `runc features` prints): what this runtime reads and
//! honours. Every list comes from the table the translation itself uses, so the two cannot drift apart.

use oci_spec::runtime::LinuxSeccompFilterFlag;
use sandkasten::Capability;
use serde_json::{Value, json};

use crate::spec::{
    ACTIONS, ActionUse, BACKEND_ANNOTATIONS, HOOK_NAMES, MOUNT_OPTIONS, NAMESPACES, NATIVE_ARCH,
    NamespaceUse, OCI_VERSION_MAX, OCI_VERSION_MIN, OPERATORS, OptionUse,
};

/// The seccomp filter flags the runtime-spec knows; the translation accepts them with a note, and applies none.
const SECCOMP_FLAGS: [LinuxSeccompFilterFlag; 4] = [
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

/// The annotation of `features.json` giving this runtime's version.
pub const VERSION_ANNOTATION: &str = "run.oci.sandbox.version";

/// The `features.json` document:
/// - `mountOptions`: the options binds and tmpfs mounts honour, or take without effect (access times); those
///   accepted but not applied (`noexec`, propagation, ...) and those refused (`idmap`) are left out.
/// - `linux.namespaces`: those the sandbox creates or (network) joins; `time` is left out.
/// - `linux.capabilities`: those the process's root may keep ([`Capability::ALL`]).
/// - `linux.seccomp.actions`: those accepted (some honoured differently, see the notes of a translation);
///   `archs`: the native one only; `supportedFlags`: none.
pub fn features() -> Value {
    let mount_options: Vec<&str> = MOUNT_OPTIONS
        .iter()
        .filter(|(_, how)| matches!(how, OptionUse::Honoured | OptionUse::NoEffect))
        .map(|(name, _)| *name)
        .collect();
    let namespaces: Vec<String> = NAMESPACES
        .iter()
        .filter(|(_, how)| matches!(how, NamespaceUse::New | NamespaceUse::Network))
        .map(|(kind, _)| crate::spec::namespace_name(*kind))
        .collect();
    let capabilities: Vec<String> = Capability::ALL
        .iter()
        .map(|c| format!("CAP_{}", c.name().to_ascii_uppercase()))
        .collect();
    let actions: Vec<String> = ACTIONS
        .iter()
        .filter(|(_, how)| !matches!(how, ActionUse::Refused(_)))
        .map(|(action, _)| crate::spec::json_name(action))
        .collect();
    let operators: Vec<String> = OPERATORS
        .iter()
        .map(|(op, _)| crate::spec::json_name(op))
        .collect();
    let flags: Vec<String> = SECCOMP_FLAGS.iter().map(crate::spec::json_name).collect();
    let mut annotations = serde_json::Map::new();
    for key in BACKEND_ANNOTATIONS {
        annotations.insert(key.into(), "namespace|vm".into());
    }
    annotations.insert(VERSION_ANNOTATION.into(), env!("CARGO_PKG_VERSION").into());
    json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": HOOK_NAMES,
        "mountOptions": mount_options,
        "linux": {
            "namespaces": namespaces,
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": actions,
                "operators": operators,
                "archs": [crate::spec::json_name(&NATIVE_ARCH)],
                "knownFlags": flags,
                "supportedFlags": [],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}},
        },
        "annotations": annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Features, LinuxNamespaceType, LinuxSeccompAction};

    #[test]
    fn reads_as_the_spec_type() {
        let doc = features();
        let f: Features = serde_json::from_value(doc.clone()).expect("features.json per the spec");
        assert_eq!(f.oci_version_min(), "1.0.0");
        assert_eq!(f.hooks().as_ref().unwrap().len(), 6);
        let linux = f.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(
            ns.contains(&LinuxNamespaceType::Network) && ns.contains(&LinuxNamespaceType::Mount)
        );
        assert!(!ns.contains(&LinuxNamespaceType::Time));
        let seccomp = linux.seccomp().as_ref().unwrap();
        let actions = seccomp.actions().as_ref().unwrap();
        assert!(actions.contains(&LinuxSeccompAction::ScmpActErrno));
        assert!(!actions.contains(&LinuxSeccompAction::ScmpActNotify));
        assert_eq!(seccomp.operators().as_ref().unwrap().len(), 7);
        assert!(
            seccomp
                .operators()
                .as_ref()
                .unwrap()
                .contains(&"SCMP_CMP_MASKED_EQ".to_string())
        );
        assert_eq!(
            doc["linux"]["seccomp"]["archs"],
            json!(["SCMP_ARCH_X86_64"])
        );
        let caps = linux.capabilities().as_ref().unwrap();
        assert!(caps.contains(&"CAP_NET_BIND_SERVICE".to_string()));
        assert!(!caps.contains(&"CAP_SYS_ADMIN".to_string()));
        let options = f.mount_options().as_ref().unwrap();
        assert!(
            options.contains(&"rbind".to_string()) && options.contains(&"relatime".to_string())
        );
        assert!(
            !options.contains(&"idmap".to_string()) && !options.contains(&"noexec".to_string())
        );
        let annotations = f.annotations().as_ref().unwrap();
        assert_eq!(annotations["run.oci.sandbox.backend"], "namespace|vm");
    }
}

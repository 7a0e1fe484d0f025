//! Naming the field of `config.json` a type error is in: serde_json says only the line and column of a value
//! of the wrong type or an unknown name, so each part of the document is checked on its own, deepest first.

use oci_spec::runtime as oci;
use serde::Deserialize;
use serde_json::Value;

type Check = fn(&Value) -> Result<(), serde_json::Error>;

fn check<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<(), serde_json::Error> {
    T::deserialize(v).map(drop)
}

/// The parts checked, deepest first (`[]`: each element of an array).
const PARTS: &[(&str, Check)] = &[
    (
        "linux.seccomp.syscalls[].args[]",
        check::<oci::LinuxSeccompArg>,
    ),
    ("linux.seccomp.syscalls[]", check::<oci::LinuxSyscall>),
    ("linux.seccomp", check::<oci::LinuxSeccomp>),
    ("linux.namespaces[]", check::<oci::LinuxNamespace>),
    ("linux.uidMappings[]", check::<oci::LinuxIdMapping>),
    ("linux.gidMappings[]", check::<oci::LinuxIdMapping>),
    ("linux.devices[]", check::<oci::LinuxDevice>),
    ("linux.resources.devices[]", check::<oci::LinuxDeviceCgroup>),
    ("linux.resources.memory", check::<oci::LinuxMemory>),
    ("linux.resources.cpu", check::<oci::LinuxCpu>),
    ("linux.resources.pids", check::<oci::LinuxPids>),
    ("linux.resources", check::<oci::LinuxResources>),
    ("linux", check::<oci::Linux>),
    ("process.rlimits[]", check::<oci::PosixRlimit>),
    ("process.capabilities", check::<oci::LinuxCapabilities>),
    ("process.user", check::<oci::User>),
    ("process", check::<oci::Process>),
    ("mounts[]", check::<oci::Mount>),
    ("root", check::<oci::Root>),
    ("hooks", check::<oci::Hooks>),
];

/// The first part of `doc` that does not read as its type: its name (`linux.seccomp.syscalls[3]`) and what
/// is wrong with it. `None` when every part reads (the error is in a top-level field).
pub(super) fn locate(doc: &Value) -> Option<(String, String)> {
    PARTS.iter().find_map(|(path, check)| {
        select(doc, path)
            .into_iter()
            .find_map(|(name, v)| check(v).err().map(|e| (name, e.to_string())))
    })
}

/// The values at `path`, with their names.
fn select<'a>(doc: &'a Value, path: &str) -> Vec<(String, &'a Value)> {
    let mut found = vec![(String::new(), doc)];
    for segment in path.split('.') {
        let (key, each) = match segment.strip_suffix("[]") {
            Some(key) => (key, true),
            None => (segment, false),
        };
        let mut next = Vec::new();
        for (name, v) in found {
            let Some(child) = v.get(key) else { continue };
            let name = if name.is_empty() {
                key.to_string()
            } else {
                format!("{name}.{key}")
            };
            match (each, child.as_array()) {
                (false, _) => next.push((name, child)),
                (true, Some(items)) => next.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| (format!("{name}[{i}]"), item)),
                ),
                // Not an array: the parent's check names it.
                (true, None) => {}
            }
        }
        found = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_deepest_bad_part() {
        let doc = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sh"]},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write"], "action": "SCMP_ACT_SOMETIMES"}
            ]}}
        });
        let (name, why) = locate(&doc).unwrap();
        assert_eq!(name, "linux.seccomp.syscalls[1]");
        assert!(why.contains("SCMP_ACT_SOMETIMES"), "{why}");

        let doc = serde_json::json!({"process": {"user": {"uid": "root"}, "cwd": "/"}});
        assert_eq!(locate(&doc).unwrap().0, "process.user");
        let doc = serde_json::json!({"mounts": [{"destination": "/a"}, {"type": "tmpfs"}]});
        let (name, why) = locate(&doc).unwrap();
        assert_eq!(name, "mounts[1]");
        assert!(why.contains("destination"), "{why}");
        assert!(locate(&serde_json::json!({"hostname": 5})).is_none());
    }
}

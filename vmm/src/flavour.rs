//! Which KVM `/dev/kvm` is: hardware virtualisation (VT-x/SVM), or PVM (the `kvm_pvm` module: KVM in
//! software, on hosts without VT-x/SVM, where a guest kernel needs boot options of its own and boots slowly),
//! and whether this caller can use it ([`probe_kvm`]).

use std::path::Path;

use serde::Serialize;

/// The KVM underneath `/dev/kvm`, as [`KvmFlavour::detect`] finds it. Its [name](KvmFlavour::name) (also its
/// serde form) is "hardware", "pvm" or "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum KvmFlavour {
    /// The CPU has VT-x or SVM (the `vmx` or `svm` flag in `/proc/cpuinfo`).
    #[serde(rename = "hardware")]
    Hardware,
    /// The `kvm_pvm` module is loaded: KVM without VT-x/SVM (guest kernel code is emulated, slow).
    #[serde(rename = "pvm")]
    Pvm,
    /// Neither: no KVM, or one this crate does not recognise.
    #[serde(rename = "none")]
    Unknown,
}

impl KvmFlavour {
    /// Finds the flavour of this host's KVM: PVM when `/sys/module/kvm_pvm` exists (checked first), else
    /// hardware when `/proc/cpuinfo` lists `vmx` or `svm`, else [`KvmFlavour::Unknown`]. It reads these files
    /// only: whether `/dev/kvm` opens is not part of it.
    pub fn detect() -> KvmFlavour {
        if Path::new("/sys/module/kvm_pvm").exists() {
            return KvmFlavour::Pvm;
        }
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| KvmFlavour::from_cpuinfo(&c))
            .unwrap_or(KvmFlavour::Unknown)
    }

    /// Hardware when a `flags` line of `cpuinfo` has `vmx` or `svm`, else unknown.
    fn from_cpuinfo(cpuinfo: &str) -> KvmFlavour {
        if cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")))
        {
            KvmFlavour::Hardware
        } else {
            KvmFlavour::Unknown
        }
    }

    /// "hardware", "pvm" or "none".
    pub fn name(self) -> &'static str {
        match self {
            KvmFlavour::Hardware => "hardware",
            KvmFlavour::Pvm => "pvm",
            KvmFlavour::Unknown => "none",
        }
    }

    /// Whether this is PVM.
    pub fn is_pvm(self) -> bool {
        self == KvmFlavour::Pvm
    }
}

impl std::fmt::Display for KvmFlavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How `/dev/kvm` behaves here, for this caller.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KvmReport {
    /// `/dev/kvm` opens and answers KVM_GET_API_VERSION with the stable API version (12).
    pub usable: bool,
    /// Hardware (VT-x/SVM), PVM (the kvm_pvm software module) or unknown; serialised as "hardware", "pvm" or
    /// "none".
    pub flavour: KvmFlavour,
    /// Why it is not usable, when it is not.
    pub reason: Option<String>,
}

/// Opens `/dev/kvm` and asks for its API version: whether this caller can run a VM here, and on which KVM.
pub fn probe_kvm() -> KvmReport {
    let flavour = KvmFlavour::detect();
    match kvm_ioctls::Kvm::new() {
        Ok(kvm) => {
            let v = kvm.get_api_version();
            KvmReport {
                usable: v == 12,
                flavour,
                reason: (v != 12).then(|| format!("KVM_GET_API_VERSION returned {v}")),
            }
        }
        Err(e) => KvmReport {
            usable: false,
            flavour,
            reason: Some(format!("cannot open /dev/kvm: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_serde_form_are_the_reported_strings() {
        for (f, name) in [
            (KvmFlavour::Hardware, "hardware"),
            (KvmFlavour::Pvm, "pvm"),
            (KvmFlavour::Unknown, "none"),
        ] {
            assert_eq!(f.name(), name);
            assert_eq!(f.to_string(), name);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn cpu_flags_decide_hardware() {
        let vmx = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let svm = "flags\t\t: fpu svm\n";
        assert_eq!(KvmFlavour::from_cpuinfo(vmx), KvmFlavour::Hardware);
        assert_eq!(KvmFlavour::from_cpuinfo(svm), KvmFlavour::Hardware);
        assert_eq!(
            KvmFlavour::from_cpuinfo("flags\t\t: fpu sse\n"),
            KvmFlavour::Unknown
        );
        // Not a flags line.
        assert_eq!(
            KvmFlavour::from_cpuinfo("model name\t: x vmx\n"),
            KvmFlavour::Unknown
        );
    }
}

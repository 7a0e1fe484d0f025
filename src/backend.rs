//! Which backend and which VM engine a caller asks for (description types: they import nothing).

/// Which backend runs the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Namespaces when the host allows them, else the VM backend.
    #[default]
    Auto,
    /// Linux namespaces on the host kernel.
    Namespace,
    /// A microVM with our guest kernel.
    Vm,
}

/// Which engine runs the VM backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmEngine {
    /// Our own KVM VMM on hosts with hardware KVM, else QEMU.
    #[default]
    Auto,
    /// QEMU `-M microvm` (KVM when hardware KVM is usable, else TCG).
    Qemu,
    /// Our own KVM VMM.
    Builtin,
}

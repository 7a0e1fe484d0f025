//! The guest kernel's command line, host side: the options every boot of our guest kernel (`kernel-config/`)
//! and agent gets, those for QEMU's TCG and those for PVM, the announced virtio-serial ports and the agent's
//! argument. Both engines build their line here: QEMU's `-append` (`qemu.rs`) and the builtin VMM's
//! configuration (the VMM itself takes the line as given and only appends its virtio-mmio options).

/// Kernel options for every boot: console on the serial port, quiet, reboot through the keyboard controller
/// (QEMU exits with `-no-reboot`), panic reboots at once.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1";

/// Kernel options under TCG only: no local APIC timer (its calibration costs 0.25 s under TCG, whose CPU
/// model has no TSC-deadline timer, so the guest ticks with the PIT). Never on KVM: there the CPU has the
/// TSC-deadline timer, with which Linux (with an MP table) turns the PIT off, so this would leave the guest
/// without any clock event device: no ticks, no CPU-time limit, timers that never fire.
pub const TCG_CMDLINE: &str = "nolapic_timer";

/// Kernel options our guest needs on PVM (`/dev/kvm` is the `kvm_pvm` module): see
/// `kernel-config/README.md`. Each works around an instruction PVM's emulator lacks, and `sandbox_pvm=1`
/// turns on our kernel patches. The last one reaches the agent's environment (the kernel passes unknown
/// `KEY=VALUE` options to init), which hands it to every program: guest user code runs natively on the host
/// CPU with AVX enabled, while the guest kernel, without XSAVE (`noxsave`), saves only the legacy FPU/SSE
/// state when it switches processes, so glibc must not use AVX registers that another process could clobber
/// (measured in a guest here: a process holding ymm0-15 found them changed in 2-65% of its rounds while
/// others ran). Clearing the AVX features is not enough: glibc picks its AVX `memcpy`/`memmove`/`memset` on
/// the preference `AVX_Fast_Unaligned_Load`, set before the tunables apply, so it is cleared too (without it
/// the agent itself, PID 1, copied with AVX and crashed on a clobbered pointer in CI). Clearing XSAVE and
/// XSAVEC makes the dynamic loader's lazy-binding trampoline save and restore only the SSE registers: with
/// XSAVEC it wrote back AVX registers captured before a process switch, over another process's.
pub const PVM_CMDLINE: &str = "noxsave clearcpuid=popcnt,smap,cx16 sandbox_pvm=1 \
     GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,\
     -AVX_Fast_Unaligned_Load,-XSAVEC,-XSAVE";

/// The value of `GLIBC_TUNABLES` in [`PVM_CMDLINE`].
pub fn pvm_glibc_tunables() -> &'static str {
    PVM_CMDLINE
        .split(' ')
        .find_map(|w| w.strip_prefix("GLIBC_TUNABLES="))
        .unwrap_or_default()
}

/// An argument for the agent: the kernel passes a word it does not know (no `=`, no `.`) to init, which
/// ignores it. (Not after `--`: QEMU's microvm appends its virtio-mmio options at the end of the line.) Its
/// only purpose is room: the sandbox's init, a fork of the agent, writes the name `sandbox-init` over its
/// argument area (as on the host), which `/init` alone is too short to hold, so `ps` in a sandbox shows the
/// same PID 1 whatever the backend, engine or accelerator.
pub const INIT_ARGS: &str = "sandbox-init";

/// The guest command line: the base options, then under TCG (`kvm` false) the TCG options, on PVM (`kvm`
/// and `pvm`) the PVM options, then `extra`, then [`INIT_ARGS`].
pub fn kernel_cmdline(kvm: bool, pvm: bool, extra: &str) -> String {
    let mut c = String::from(BASE_CMDLINE);
    let accel = match (kvm, pvm) {
        (false, _) => TCG_CMDLINE,
        (true, true) => PVM_CMDLINE,
        (true, false) => "",
    };
    for part in [accel, extra.trim(), INIT_ARGS] {
        if !part.is_empty() {
            c.push(' ');
            c.push_str(part);
        }
    }
    c
}

/// [`kernel_cmdline`] with `ports` announced after `extra` (`sandbox.ports=`, [`crate::protocol::ports_param`]),
/// so that the agent waits for each of them (else a run on a starved guest could start before its stdout port
/// is named, and its output would go to the console). No ports, no announcement.
pub fn kernel_cmdline_with_ports<'a>(
    kvm: bool,
    pvm: bool,
    extra: &str,
    ports: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut ports = ports.into_iter().peekable();
    if ports.peek().is_none() {
        return kernel_cmdline(kvm, pvm, extra);
    }
    let extra = format!("{extra} {}", crate::protocol::ports_param(ports));
    kernel_cmdline(kvm, pvm, &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_pvm_options_only_on_pvm_and_the_tcg_ones_only_on_tcg() {
        let base = BASE_CMDLINE;
        let tcg = TCG_CMDLINE;
        assert_eq!(
            kernel_cmdline(true, false, ""),
            format!("{base} {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline(true, false, " x=1 "),
            format!("{base} x=1 {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline(false, true, ""),
            format!("{base} {tcg} {INIT_ARGS}")
        );
        assert!(!kernel_cmdline(true, true, "").contains(tcg));
        let pvm = kernel_cmdline(true, true, "y");
        assert_eq!(pvm, format!("{base} {PVM_CMDLINE} y {INIT_ARGS}"));
        assert!(pvm.contains("reboot=k") && pvm.contains("sandbox_pvm=1"));
    }

    #[test]
    fn announced_ports_come_after_the_extra_options_and_before_the_agent_argument() {
        let ports = "sandbox.ports=sandbox.control,sandbox.stdout";
        assert_eq!(
            kernel_cmdline_with_ports(true, false, "", ["sandbox.control", "sandbox.stdout"]),
            format!("{BASE_CMDLINE} {ports} {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline_with_ports(false, false, "x=1", ["sandbox.control", "sandbox.stdout"]),
            format!("{BASE_CMDLINE} {TCG_CMDLINE} x=1 {ports} {INIT_ARGS}")
        );
        assert_eq!(
            kernel_cmdline_with_ports(true, true, "x=1", []),
            kernel_cmdline(true, true, "x=1")
        );
    }

    /// glibc's own view of the CPU (`ld.so --list-diagnostics`) under the given `GLIBC_TUNABLES`.
    fn glibc_diagnostics(tunables: &str) -> Option<String> {
        let out = std::process::Command::new("/lib64/ld-linux-x86-64.so.2")
            .arg("--list-diagnostics")
            .env_clear()
            .env("GLIBC_TUNABLES", tunables)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of `key` in the diagnostics, a hexadecimal number.
    fn diagnostic(text: &str, key: &str) -> u64 {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("glibc's diagnostics have no {key}:\n{text}"));
        u64::from_str_radix(line.trim_start_matches("0x"), 16).unwrap()
    }

    /// What makes glibc touch AVX registers: the preference for its AVX copies; the active AVX, AVX2 and
    /// AVX-512F bits (CPUID leaf 1 ECX bit 28; leaf 7 EBX bits 5 and 16); a nonzero XSAVE area for the
    /// lazy-binding trampoline (zero: it saves only SSE registers, with FXSAVE).
    fn glibc_avx(text: &str) -> [bool; 5] {
        [
            diagnostic(text, "x86.cpu_features.preferred.AVX_Fast_Unaligned_Load") != 0,
            diagnostic(text, "x86.cpu_features.features[0x0].active[0x2]") & (1 << 28) != 0,
            diagnostic(text, "x86.cpu_features.features[0x1].active[0x1]") & (1 << 5) != 0,
            diagnostic(text, "x86.cpu_features.features[0x1].active[0x1]") & (1 << 16) != 0,
            diagnostic(text, "x86.cpu_features.xsave_state_size") != 0,
        ]
    }

    #[test]
    fn the_pvm_glibc_tunables_leave_glibc_no_avx_code() {
        let Some(plain) = glibc_diagnostics("") else {
            eprintln!("SKIPPED: no /lib64/ld-linux-x86-64.so.2 to ask");
            return;
        };
        if !plain.contains("x86.cpu_features") {
            eprintln!("SKIPPED: this glibc lists no CPU features");
            return;
        }
        if glibc_avx(&plain) == [false; 5] {
            eprintln!("note: this CPU gives glibc no AVX: the check below cannot fail here");
        }
        let tuned = glibc_diagnostics(pvm_glibc_tunables()).unwrap();
        assert_eq!(
            glibc_avx(&tuned),
            [false; 5],
            "[AVX copies, AVX, AVX2, AVX-512F, XSAVE trampoline] with GLIBC_TUNABLES={}",
            pvm_glibc_tunables()
        );
    }
}

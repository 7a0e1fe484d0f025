//! `sandbox doctor`: what this host can enforce, as text or JSON.

use std::process::ExitCode;

use sandkasten::probe::KvmFlavour;

/// Exit code: 0 when some backend can run here, 1 when none can (the text says why).
pub(crate) fn doctor(json: bool) -> ExitCode {
    let report = sandkasten::probe();
    // The namespace backend needs user namespaces; the VM backend its engine and guest (no problem found).
    let usable = report.user_namespaces || report.vm.problem.is_none();
    let code = if usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
        if !usable {
            eprintln!(
                "sandbox doctor: no backend can run here (user_namespaces and vm.problem say why)"
            );
        }
        return code;
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("kernel:           {}", report.kernel);
    println!("running as root:  {}", yes(report.root));
    println!(
        "user namespaces:  {}{}",
        yes(report.user_namespaces),
        report
            .user_namespaces_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    println!("cgroup layout:    {}", report.cgroup.layout);
    println!(
        "  v2 controllers: {}",
        report.cgroup.v2_controllers.join(" ")
    );
    println!(
        "  v1 controllers: {}",
        report.cgroup.v1_controllers.join(" ")
    );
    for w in &report.cgroup.writable {
        println!("  writable:       {}", w.display());
    }
    println!("seccomp:          {}", yes(report.seccomp));
    println!(
        "landlock:         {}",
        report
            .landlock_abi
            .map_or("not enabled".into(), |v| format!("ABI {v}"))
    );
    println!(
        "kvm:              {} ({}){}",
        yes(report.kvm.usable),
        report.kvm.flavour,
        report
            .kvm
            .reason
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let vm = &report.vm;
    let shown = |p: &Option<std::path::PathBuf>| {
        p.as_deref()
            .map_or("missing".into(), |p| p.display().to_string())
    };
    let builtin = match (report.kvm.usable, report.kvm.flavour) {
        (true, KvmFlavour::Hardware) => "ready (hardware KVM; the default engine)".to_string(),
        (true, flavour) => format!("ready ({flavour} KVM: slow boots; qemu is the default here)"),
        (false, _) => "unavailable (needs /dev/kvm)".to_string(),
    };
    println!(
        "vm engines:       qemu {} ({}); builtin {builtin}",
        shown(&vm.qemu),
        vm.accelerator
    );
    println!(
        "guest:            kernel {}, agent {}",
        shown(&vm.kernel),
        shown(&vm.agent)
    );
    if let Some(problem) = &vm.problem {
        println!("  vm problem:     {problem}");
    }
    let auto = match (report.user_namespaces, &vm.problem) {
        (true, _) => "namespace",
        (false, None) => "vm (qemu)",
        (false, Some(_)) => "none usable: see above",
    };
    println!("backend (auto):   {auto}");
    println!(
        "user network:     {}",
        match (&report.pasta, &report.user_network_problem) {
            (Some(p), None) => format!("pasta {}", p.display()),
            (_, Some(problem)) => format!("unavailable: {problem}"),
            (None, None) => "unavailable".into(),
        }
    );
    println!(
        "user network, VM: {}",
        match &report.passt {
            Some(p) => format!("passt {} (a VM of its own: runs and sessions)", p.display()),
            None => "unavailable: no passt on the PATH (apt-get install passt)".into(),
        }
    );
    if !usable {
        eprintln!(
            "sandbox doctor: no backend can run here: enable user namespaces, or install the VM backend's \
             engine and guest (see above)"
        );
    }
    code
}

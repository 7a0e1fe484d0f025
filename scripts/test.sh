#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian 12 machine.
#
# 1. Installs what the tests need (Debian packages) when it is missing.
# 2. Checks formatting and lints.
# 3. Runs the whole suite as the calling user (root in CI).
# 4. Runs the test binaries again as an unprivileged user (uid/gid 65534), staged in a temp dir that user can
#    read, because most users of a sandbox are not root.
#
# `scripts/test.sh` is what CI runs (budget: 60 minutes on a fresh machine). `scripts/test.sh --full` adds the
# long batteries, run by hand before resolving an issue that touches the VMs: the escape probes, resource
# attacks and leak checks on the builtin engine (about 1.5 h on this machine's software KVM), every CPython
# module in a QEMU VM (45 minutes or more), and (SANDBOX_TEST_FULL=1, testkit::builtin_battery) the workspace
# tests that boot our VMM under software KVM beyond the conformance pass: the guest kernel's PVM boot test,
# the CLI on the builtin engine, a pool restored from snapshots (about 15 minutes; on hardware KVM always).
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
case "${1:-}" in
    --full) full=1; export SANDBOX_TEST_FULL=1 ;;
    "") ;;
    *) echo "usage: scripts/test.sh [--full]" >&2; exit 2 ;;
esac

start=$SECONDS
say() { printf '==> [%2d:%02d] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$*"; }

# --- 1. packages -------------------------------------------------------------------------------------------
need=()
for pair in setpriv:util-linux pasta:passt bwrap:bubblewrap python3:python3 gcc:gcc qemu-system-x86_64:qemu-system-x86 cpio:cpio newuidmap:uidmap umoci:umoci busybox:busybox-static runc:runc podman:podman containerd:containerd; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# Packages without a command, by a file they install: CPython's regression tests (scripts/cpython-tests.sh);
# podman's default seccomp profile (runtime/tests/seccomp.rs translates it).
for pair in /usr/lib/python3.11/test/test_os.py:libpython3.11-testsuite \
    /usr/share/containers/seccomp.json:golang-github-containers-common; do
    [ -e "${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        say "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
            apt-get update -qq && apt-get install -y -qq "${need[@]}"
        }
    else
        echo "missing packages: ${need[*]} (install them as root)" >&2
        exit 1
    fi
fi

# --- 1b. the guest: kernel (cached by a hash of its inputs; ~4-8 min the first time) and static agent ------
say "guest kernel (kernel-config/build.sh)"
SANDBOX_KERNEL=$(kernel-config/build.sh | tail -n 1)
say "guest agent (scripts/build-guest.sh)"
SANDBOX_AGENT=$(scripts/build-guest.sh | tail -n 1)
export SANDBOX_KERNEL SANDBOX_AGENT

# --- 2. style ----------------------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "the namespace backend alone: cargo clippy -p sandkasten --no-default-features"
cargo clippy -p sandkasten --no-default-features --all-targets --quiet -- -D warnings
say "the namespace backend with the async API alone: cargo clippy -p sandkasten --no-default-features --features tokio"
cargo clippy -p sandkasten --no-default-features --features tokio --all-targets --quiet -- -D warnings
say "floors and import circles (scripts/check-layers.py, ARCHITECTURE.md)"
scripts/check-layers.py
say "the public docs and their links (cargo doc -D warnings)"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --quiet -p sandkasten -p sandkasten-vmm -p sandbox-runtime \
    --features sandkasten/tokio
say "packaging the library crates (cargo package --no-verify; the verifying build by hand: ARCHITECTURE.md)"
cargo package --no-verify --quiet -p sandkasten-vmm -p sandkasten

# --- 2b. fuzzing: a short run of each target (scripts/fuzz.sh; the longer run is `scripts/fuzz.sh 600`) ------
say "fuzzing, 15 s per target (scripts/fuzz.sh)"
fuzz_status=0
scripts/fuzz.sh 15 || fuzz_status=$?
case $fuzz_status in
    0) ;;
    2) say "SKIPPED fuzzing: no nightly toolchain can be found or installed (cargo fuzz needs one)" ;;
    *) echo "fuzzing failed: a crash, or the build (see above)" >&2; exit 1 ;;
esac

# --- 3. the suite as the caller ----------------------------------------------------------------------------
say "cargo test as $(id -un)"
cargo test --workspace
say "the namespace backend alone (without the vm feature): unit, conformance, namespace, network and security tests"
cargo test -p sandkasten --no-default-features --lib --test conformance --test namespace --test network --test security

# The escape probes through exec: each probe a command of a fresh session with its policy (a few seconds).
say "escape probes through exec (session commands)"
SANDBOX_TEST_BACKEND=session cargo test --test escape
# And each probe a command of a fresh VM session (QEMU engine), stopped after its probe: about 2 minutes.
say "escape probes through exec in VM sessions (QEMU)"
SANDBOX_TEST_BACKEND=vm-session cargo test --test escape
# The escape probes again, each in a VM (QEMU engine): about 2.5 minutes.
say "escape probes on the VM backend"
SANDBOX_TEST_BACKEND=vm cargo test --test escape
# Resource attacks and leaks in VMs (20 sequential, 10 concurrent, 10 killed supervisors): a few minutes.
say "resource attacks and leaks on the VM backend"
SANDBOX_TEST_BACKEND=vm cargo test --test attacks --test leaks
# The same probes and attacks as served runs of warm VMs (a pool of QEMU VMs): every run in a VM that ran
# others before it, and must still be clean. About two minutes.
say "escape probes and resource attacks on warm VMs (QEMU pool)"
SANDBOX_TEST_BACKEND=pool cargo test --test escape --test attacks

# CPython's own regression tests (os, posix, subprocess, socket, shutil, tempfile, signal, select) on the host,
# then inside `sandbox run` on the namespace backend called by root and by uid 65534, and a few of them in QEMU
# VMs: a module that passes on the host must pass inside (the few failures that user namespaces make
# unavoidable are listed with their reasons in scripts/cpython_tests.py). About 3 minutes per configuration
# (host, root, uid 65534) and about 1 in the VM for test_posix, test_shutil and test_select (cpython-tests.sh
# --full: every module in the VM too, about 10 minutes: 619 s on 2026-12-04).
say "CPython's regression tests inside sandbox run (scripts/cpython-tests.sh)"
cargo build --quiet -p sandbox-examples --bin sandbox
if [ "$full" = 1 ]; then
    scripts/cpython-tests.sh --sandbox target/debug/sandbox --full
else
    scripts/cpython-tests.sh --sandbox target/debug/sandbox
fi

# Our own KVM VMM (the builtin engine), whenever this user can open /dev/kvm. Under this machine's software
# KVM (PVM) a boot takes one to two minutes and every run tens of seconds (guest kernel code is emulated), so
# the runs share warm VMs restored from a snapshot of the booted guest (~/.cache/sandbox/snapshots; the first
# start of a new agent or kernel boots and saves it). CI runs one batched pass on it: the conformance suite
# (every property, two warm VMs; 5-13 minutes here), and one test of its network device (passt, one boot
# and one restored run on a snapshot cache of its own). The escape probes, resource attacks and leak checks on
# this engine are the --full mode's (the same tests run above on the namespace backend, on QEMU VMs and on
# warm QEMU pools; on the builtin engine about 1.5 h here: all 67 probes 24-45 min, the attacks 40-60 min).
# (The default run already boots the builtin engine once through the CLI, sandbox-examples/tests/vm_cli.rs;
# tests/vmm_boot.rs, the raw VMM API's boot, is run by hand: cargo test --test vmm_boot -- --ignored.)
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    say "conformance suite on the builtin engine (two warm VMs)"
    SANDBOX_TEST_BUILTIN=1 cargo test --test conformance builtin:: -- --test-threads=2
    say "user-mode networking on the builtin engine (a boot that saves a snapshot, then a restored run)"
    SANDBOX_TEST_BUILTIN=1 cargo test --test network_vm our_own_vmm
    if [ "$full" = 1 ]; then
        say "--full: escape probes, resource attacks and leaks on the builtin engine"
        SANDBOX_TEST_BACKEND=builtin cargo test --release --test escape --test attacks --test leaks -- \
            --nocapture --test-threads=1
    fi
else
    say "SKIPPED the builtin engine's runs: $(id -un) cannot open /dev/kvm"
fi

# --- 4. the suite as an unprivileged user -------------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
    say "not root: the unprivileged run above already covers the unprivileged path"
    exit 0
fi
stage=$(mktemp -d /tmp/sandbox-unpriv.XXXXXX)
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
mapfile -t bins < <(cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])')
cargo build --workspace --quiet
for b in sandbox coderun sandbox-test-runner sandbox-runtime sandbox-service; do
    install -m 755 "target/debug/$b" "$stage/$b"
done
install -m 644 "$SANDBOX_KERNEL" "$stage/vmlinux"
install -m 755 "$SANDBOX_AGENT" "$stage/sandbox-init"
say "as uid 65534, the tests that need /dev/kvm (mode 0600 here) check the clean refusal or say SKIPPED"
failed=0
for b in "${bins[@]}"; do
    name=$(basename "$b")
    install -m 755 "$b" "$stage/$name"
    say "unprivileged (uid 65534): $name"
    if ! (cd /tmp && SANDBOX_BIN="$stage/sandbox" CODERUN_BIN="$stage/coderun" \
        SANDBOX_KERNEL="$stage/vmlinux" SANDBOX_AGENT="$stage/sandbox-init" \
        SANDBOX_TEST_RUNNER_BIN="$stage/sandbox-test-runner" SANDBOX_RUNTIME_BIN="$stage/sandbox-runtime" \
        SANDBOX_SERVICE_BIN="$stage/sandbox-service" setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$stage/$name" --test-threads=2); then
        failed=1
    fi
done
[ "$failed" = 0 ] || { echo "unprivileged tests failed" >&2; exit 1; }
say "all tests passed, as root and as uid 65534"

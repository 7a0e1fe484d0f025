#!/usr/bin/env bash
# CPython's own regression tests (Debian's libpython3.11-testsuite) on the host and inside `sandbox run`.
#
# Usage: scripts/cpython-tests.sh [--full | MODULE...] [--configs host,ns-root,ns-unpriv,vm-qemu]
#                                 [--sandbox BIN] [--out DIR] [--show-skips] [--policy FILE] [--from DIR] ...
#
# Each module runs as its own `/usr/bin/python3 -m test -v MODULE` first on the host, then inside `sandbox run`
# on the namespace backend called by root (ns-root) and by uid 65534 (ns-unpriv, through setpriv, the binary
# staged in a directory that user can enter), and on the VM backend with the QEMU engine (vm-qemu, when
# SANDBOX_KERNEL and SANDBOX_AGENT are set:
#   export SANDBOX_KERNEL=~/.cache/sandbox/kernel/current/vmlinux SANDBOX_AGENT=$(scripts/build-guest.sh | tail -n 1)
# ). It prints a table module x configuration (pass/fail, seconds, failing tests) and exits 1 when a module
# fails inside a sandbox while it passes on the host (or fails there with a test that passes on the host).
#
# Modules: by default test_os test_posix test_subprocess test_socket test_shutil test_tempfile test_signal
# test_select on the host and the namespace backend (under 3 minutes per configuration), and only test_posix
# test_shutil test_select in the VM (about 1 minute: TCG runs these tests 3-30x slower); --full runs them all
# in the VM too (about 10 minutes); MODULE... names others, for every configuration. The sandbox binary:
# --sandbox BIN, else
# $SANDBOX_BIN, else target/release/sandbox (built when missing). Logs and verdicts (--report JSON) stay in
# --out DIR (default: a new /tmp/cpython-tests.* directory). The policy and the reasons of every choice are in
# scripts/cpython_tests.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

case "${1:-}" in
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}"; exec python3 "$here/scripts/cpython_tests.py" --sandbox /bin/true --help ;;
esac

sandbox=${SANDBOX_BIN:-}
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sandbox) sandbox=$2; shift 2 ;;
        --sandbox=*) sandbox=${1#--sandbox=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -z "$sandbox" ]; then
    sandbox=$here/target/release/sandbox
    if [ ! -x "$sandbox" ]; then
        echo "==> building the sandbox binary (cargo build --release -p sandbox-examples --bin sandbox)" >&2
        (cd "$here" && cargo build --release --quiet -p sandbox-examples --bin sandbox)
    fi
fi
# Debian's python3 runs the harness too (any python3 >= 3.10 would do).
exec /usr/bin/python3 "$here/scripts/cpython_tests.py" --sandbox "$sandbox" "${args[@]}"

#!/usr/bin/env bash
# Build the guest agent `sandbox-init` as a fully static x86_64 executable (glibc, +crt-static).
#
# Usage: scripts/build-guest.sh [--debug]
#
# The explicit --target keeps proc-macros and build scripts dynamic while the agent links statically. The
# build goes to its own target directory (its RUSTFLAGS differ from a normal build, which would otherwise
# rebuild everything each time):
#   ${SANDBOX_GUEST_TARGET_DIR:-<repo>/target/guest}
# Progress goes to stderr; the LAST line of stdout is the absolute path of the agent.
# A binary that is not static fails the build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=release
case "${1:-}" in
    --debug) profile=debug ;;
    "") ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-guest.sh: unknown argument: $1" >&2; exit 2 ;;
esac

triple=x86_64-unknown-linux-gnu
target_dir=${SANDBOX_GUEST_TARGET_DIR:-$here/target/guest}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)
echo "==> guest agent: building sandbox-init ($profile, static, target dir $target_dir)" >&2

args=(build --manifest-path "$here/Cargo.toml" --target "$triple" --bin sandbox-init)
[ "$profile" = release ] && args+=(--release)
# Static glibc; no symbols or debug info in the binary (it goes into the uncompressed initramfs).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C strip=symbols" \
    CARGO_TARGET_DIR="$target_dir" cargo "${args[@]}" >&2

agent="$target_dir/$triple/$profile/sandbox-init"
[ -x "$agent" ] || { echo "build-guest.sh: error: $agent was not built" >&2; exit 1; }
# A static executable has no program interpreter (PT_INTERP) and no dynamic dependencies.
if command -v readelf >/dev/null && readelf -l "$agent" | grep -q 'Requesting program interpreter'; then
    echo "build-guest.sh: error: $agent is dynamically linked" >&2
    exit 1
fi
echo "==> guest agent: $(stat -c %s "$agent") bytes" >&2
echo "$agent"

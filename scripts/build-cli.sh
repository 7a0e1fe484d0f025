#!/usr/bin/env bash
# Build the CLI `sandbox` as a static executable (static-pie, glibc +crt-static): a run of the CLI skips the
# dynamic loader's work (loading libc and libgcc_s, relocations, symbol lookups) and its child copies fewer
# mappings. Measured here (BENCHMARKS.md, session 20): 294 -> 243 page faults and 4.42 -> 3.80 ms of CPU per
# `sandbox run -- /bin/true`. `sandbox-bench` measures it as the `cli-static` case when SANDBOX_STATIC_CLI
# names the binary this prints.
#
# Usage: scripts/build-cli.sh
#
# Like scripts/build-guest.sh: an explicit --target (proc macros and build scripts stay dynamic) and a target
# directory of its own, ${SANDBOX_CLI_TARGET_DIR:-<repo>/target/static-cli}. Progress goes to stderr; the LAST
# line of stdout is the absolute path of the CLI. The static glibc looks up user names (`--ids
# subordinate:USER`, the caller's name for /etc/subuid) through the NSS modules of the glibc it was built
# with: use the binary on the machine (or distribution release) that built it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
    "") ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build-cli.sh: unknown argument: $1" >&2; exit 2 ;;
esac

triple=x86_64-unknown-linux-gnu
target_dir=${SANDBOX_CLI_TARGET_DIR:-$here/target/static-cli}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)
echo "==> CLI: building sandbox (release, static, target dir $target_dir)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
    cargo build --manifest-path "$here/Cargo.toml" --release --target "$triple" \
    -p sandbox-examples --bin sandbox >&2

cli="$target_dir/$triple/release/sandbox"
[ -x "$cli" ] || { echo "build-cli.sh: error: $cli was not built" >&2; exit 1; }
if command -v readelf >/dev/null && readelf -l "$cli" | grep -q 'Requesting program interpreter'; then
    echo "build-cli.sh: error: $cli is dynamically linked" >&2
    exit 1
fi
"$cli" --version >&2
echo "$cli"

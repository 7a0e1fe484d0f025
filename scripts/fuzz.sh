#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted input (fuzz/fuzz_targets/):
#   policy_toml     policy files: Policy::from_toml_str, validate, the seccomp compiler, the namespace planner
#   run_spec_json   the host-guest channel: RunSpec::from_json + validate, find_verdict, Outcome::from_report_json
#   virtqueue       hostile virtio split queues fed to our devices (console ports, virtio-fs, virtio-net) and walked raw
#   layer_apply     image layers (uncompressed tars) applied by the image store into a fresh directory
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    each target for SECONDS (default 20, as in CI); all by default
#   scripts/fuzz.sh 600                      the longer run to do before a release (10 minutes per target)
#
# Needs a nightly toolchain (installed with rustup when missing) and cargo-fuzz (installed with cargo when
# missing). Exit status 0 when no target crashed; else 1, with the crashing input under
# fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...).
# Exit status 2 when no nightly toolchain can be had: the caller decides whether that is a skip.
# The corpus grows in fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/ holds the committed seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy_toml run_spec_json virtqueue layer_apply)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "no nightly toolchain: rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || {
        echo "fuzz.sh: no nightly toolchain and it cannot be installed (cargo fuzz needs nightly)" >&2
        exit 2
    }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

say "building the fuzz targets ($(rustup run nightly rustc --version))"
if ! cargo +nightly fuzz build >fuzz/build.log 2>&1; then
    tail -n 40 fuzz/build.log >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    say "fuzzing $t for ${secs}s"
    # -rss_limit_mb: a leak or a huge allocation is a finding too. -timeout: one input may take at most 10 s.
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>"fuzz/$t.log"; then
        tail -n 60 "fuzz/$t.log" >&2
        failed+=("$t")
    else
        grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^#[0-9]+ +DONE' \
            "fuzz/$t.log" | sed "s/^/    $t: /" || true
    fi
done
# The virtqueue target's virtio-fs device serves a small directory it made per fuzzing process.
rm -rf "${TMPDIR:-/tmp}"/sandbox-fuzz-share-*
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
say "no crash in ${targets[*]} (${secs}s each)"

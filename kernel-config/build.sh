#!/usr/bin/env bash
# Build the sandbox guest kernel (see README.md in this directory).
#
# Usage: kernel-config/build.sh [--print-key] [--force] [--help]
#
# Kernel source: $KERNEL_SRC (a directory of unpacked Linux 6.12 sources), else Debian's linux-source-6.12
# package (/usr/src/linux-source-6.12.tar.xz; installed with apt-get together with the build dependencies
# when missing). Build products are cached outside the checkout in
#   ${SANDBOX_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sandbox/kernel}/<key>/{vmlinux,bzImage,config}
# where <key> is a sha256 over the source identity, guest.config, patches/* and this script. A cached build is
# reused. "$cache/current" is a symlink to the newest key directory.
#
# The LAST line of stdout is always the absolute path of the vmlinux (also when it was cached).
# Progress: stage lines on stderr; the full make output goes to a log file that is shown if the build fails.
# On a terminal (and CI unset/false) make's output is also summarised live; otherwise only stage lines.
#
# Environment: KERNEL_SRC, SANDBOX_KERNEL_CACHE, XDG_CACHE_HOME, JOBS (default: nproc), CI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
fragment="$here/guest.config"
patchdir="$here/patches"
debian_tarball=/usr/src/linux-source-6.12.tar.xz
debian_pkgs=(linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev cpio lz4)

print_key=0
force=0
for arg in "$@"; do
    case "$arg" in
        --print-key) print_key=1 ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,17p' "$self"; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

interactive=0
if [ -t 2 ] && [ "${CI:-false}" != "true" ] && [ "${CI:-false}" != "1" ]; then interactive=1; fi
stage() { echo "==> kernel: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# ---- kernel source ----
ensure_debian_source() {
    [ -f "$debian_tarball" ] && return 0
    [ "$(id -u)" = 0 ] || die "$debian_tarball is missing; install it: sudo apt-get install ${debian_pkgs[*]} (or set KERNEL_SRC)"
    command -v apt-get >/dev/null || die "$debian_tarball is missing and apt-get is not available; set KERNEL_SRC"
    stage "installing ${debian_pkgs[*]} with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${debian_pkgs[@]}" >&2; then
        stage "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${debian_pkgs[@]}" >&2
    fi
    [ -f "$debian_tarball" ] || die "apt-get finished but $debian_tarball does not exist"
}

check_tools() {
    local missing=()
    for t in make gcc flex bison bc cpio lz4 perl sha256sum; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [ -f /usr/include/libelf.h ] || [ -f /usr/include/elfutils/libelf.h ] || missing+=(libelf-dev)
    [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            stage "installing build dependencies with apt-get (missing: ${missing[*]})"
            if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${debian_pkgs[@]:1}" >&2; then
                DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${debian_pkgs[@]:1}" >&2
            fi
        else
            die "missing build tools: ${missing[*]} (Debian: apt-get install ${debian_pkgs[*]:1})"
        fi
    fi
}

if [ -n "${KERNEL_SRC:-}" ]; then
    [ -f "$KERNEL_SRC/Makefile" ] && [ -d "$KERNEL_SRC/arch/x86" ] || die "KERNEL_SRC=$KERNEL_SRC is not a Linux source tree"
    KERNEL_SRC=$(cd "$KERNEL_SRC" && pwd)
    # Identity of a source directory: its kernel version plus a hash of the tree listing with sizes and
    # mtimes (cheap, and changes when the sources change).
    src_version=$(make -s -C "$KERNEL_SRC" kernelversion 2>/dev/null || echo unknown)
    src_id="dir:$src_version:$(cd "$KERNEL_SRC" && find . -path ./.git -prune -o -type f \( -name '*.[chS]' -o -name 'Kconfig*' -o -name 'Makefile*' -o -name '*.lds*' \) -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum | cut -d' ' -f1)"
else
    ensure_debian_source
    src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)
    # The package version plus the tarball's size and mtime identify it; hashing 150 MB each run is too slow.
    src_id="deb:$src_version:$(stat -c '%s:%Y' "$debian_tarball")"
fi

# ---- cache key ----
[ -f "$fragment" ] || die "missing $fragment"
key=$(
    {
        echo "source $src_id"
        echo "fragment $(sha256sum < "$fragment" | cut -d' ' -f1)"
        for p in "$patchdir"/*.patch; do
            [ -e "$p" ] || continue
            echo "patch $(basename "$p") $(sha256sum < "$p" | cut -d' ' -f1)"
        done
        echo "build.sh $(sha256sum < "$self" | cut -d' ' -f1)"
    } | sha256sum | cut -c1-16
)
if [ "$print_key" = 1 ]; then echo "$key"; exit 0; fi

cache=${SANDBOX_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sandbox/kernel}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
out="$cache/$key"

if [ "$force" = 0 ] && [ -f "$out/vmlinux" ]; then
    stage "cached build $key (source $src_version)"
    ln -sfn "$key" "$cache/current.tmp.$$" && mv -Tf "$cache/current.tmp.$$" "$cache/current"
    echo "$out/vmlinux"
    exit 0
fi

check_tools
work=$(mktemp -d "$cache/.build-$key.XXXXXX")
log="$work/build.log"
keep_work=0
cleanup() {
    if [ "$keep_work" = 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
fail_with_log() {
    echo "build.sh: error: $1" >&2
    if [ -f "$log" ]; then
        echo "---- last 60 lines of $log ----" >&2
        tail -n 60 "$log" >&2
        cp "$log" "$cache/last-failed-build.log" 2>/dev/null && echo "(full log: $cache/last-failed-build.log)" >&2
    fi
    exit 1
}

# ---- fresh source tree ----
src="$work/linux"
if [ -n "${KERNEL_SRC:-}" ]; then
    stage "copying sources from $KERNEL_SRC"
    mkdir -p "$src"
    (cd "$KERNEL_SRC" && tar --exclude=.git -cf - .) | (cd "$src" && tar -xf -)
    # A source directory that was configured or built in place would confuse an out-of-tree-free build.
    make -s -C "$src" mrproper >>"$log" 2>&1 || fail_with_log "make mrproper failed"
else
    stage "unpacking $debian_tarball ($src_version)"
    mkdir -p "$src"
    tar -xf "$debian_tarball" -C "$src" --strip-components=1
fi

# ---- patches ----
for p in "$patchdir"/*.patch; do
    [ -e "$p" ] || continue
    stage "applying patches/$(basename "$p")"
    patch -d "$src" -p1 --forward --batch --quiet < "$p" >>"$log" 2>&1 || fail_with_log "patch $(basename "$p") does not apply"
done

# ---- configuration ----
stage "configuring: tinyconfig + guest.config + olddefconfig"
{
    make -C "$src" tinyconfig &&
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$fragment") &&
    make -C "$src" olddefconfig
} >>"$log" 2>&1 || fail_with_log "configuration failed"

# Every symbol of the fragment must have exactly the requested value in the final .config.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            sym=${line%%=*}
            if ! grep -qxF -- "$line" "$src/.config"; then
                got=$(grep -E "^$sym=|^# $sym is not set" "$src/.config" || true)
                echo "build.sh: config symbol $sym: requested '${line#*=}', got '${got:-absent (dependency not met?)}'" >&2
                bad=1
            fi ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            if got=$(grep -E "^$sym=" "$src/.config"); then
                echo "build.sh: config symbol $sym: requested 'n' (not set), got '${got#*=}' (selected by another symbol?)" >&2
                bad=1
            fi ;;
    esac
done < "$fragment"
[ "$bad" = 0 ] || { keep_work=0; die "guest.config was not applied as written (see the symbols above)"; }

# ---- build ----
jobs=${JOBS:-$(nproc)}
stage "building vmlinux and bzImage with make -j$jobs (log: $log)"
start=$(date +%s)
if [ "$interactive" = 1 ]; then
    # Live, single-line progress on the terminal: the current make line.
    set +e
    make -C "$src" -j"$jobs" vmlinux bzImage 2>&1 | tee -a "$log" | while IFS= read -r l; do
        printf '\r\033[K    %s' "${l:0:100}" >&2
    done
    rc=${PIPESTATUS[0]}
    printf '\r\033[K' >&2
    set -e
else
    set +e
    make -C "$src" -j"$jobs" vmlinux bzImage >>"$log" 2>&1
    rc=$?
    set -e
fi
[ "$rc" = 0 ] || fail_with_log "make failed (exit $rc)"
stage "built in $(( $(date +%s) - start ))s: vmlinux $(stat -c %s "$src/vmlinux") bytes, bzImage $(stat -c %s "$src/arch/x86/boot/bzImage") bytes"

# ---- install into the cache, atomically ----
stage_dir="$work/out"
mkdir -p "$stage_dir"
cp "$src/vmlinux" "$stage_dir/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$stage_dir/bzImage"
cp "$src/.config" "$stage_dir/config"
cp "$src/System.map" "$stage_dir/System.map"
cp "$log" "$stage_dir/build.log"
{
    echo "key=$key"
    echo "source=$src_id"
    echo "kernelrelease=$(make -s -C "$src" kernelrelease 2>/dev/null || echo unknown)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$stage_dir/build-info"
if [ -e "$out" ]; then rm -rf "$out.old.$$" && mv "$out" "$out.old.$$"; fi
mv -T "$stage_dir" "$out"
rm -rf "$out.old.$$"
ln -sfn "$key" "$cache/current.tmp.$$" && mv -Tf "$cache/current.tmp.$$" "$cache/current"
stage "installed $out"
echo "$out/vmlinux"

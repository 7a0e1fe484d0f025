#!/usr/bin/env bash
# Download throughput of `--net user` (pasta for a namespace, passt for a VM) from a TCP server in a network
# namespace this script makes for itself (no packet leaves the machine). Root only (the veth pair and the
# tun node of the namespace).
#
# Usage: scripts/net-throughput.sh [MIB] [TARGET...]
#   MIB       how much each run downloads (default 64)
#   TARGET    namespace, qemu, builtin (default: namespace qemu)
# The sandbox binary: $SANDBOX_BIN, else target/release/sandbox. A VM needs SANDBOX_KERNEL and SANDBOX_AGENT:
#   export SANDBOX_KERNEL=~/.cache/sandbox/kernel/current/vmlinux SANDBOX_AGENT=$(scripts/build-guest.sh | tail -n 1)
# Measured here (2026-12-05): namespace ~1400 MiB/s, QEMU/TCG ~43 MiB/s, the builtin engine under this
# machine's software KVM ~0.15 MiB/s (64 MiB in 408 s: the guest kernel's network stack is emulated; its
# virtio-console stdout gets ~0.26 MiB/s there too).
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
    [ "$(id -u)" = 0 ] || { echo "net-throughput.sh: needs root (it makes a network namespace)" >&2; exit 1; }
    exec unshare --net --mount --propagation private -- "$0" --inside "$@"
fi
shift
mib=${1:-64}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(namespace qemu)
sandbox=${SANDBOX_BIN:-$(dirname "$0")/../target/release/sandbox}

# The test network: the host's address 10.77.0.1 and the server's 10.77.0.2 on one veth end, a default
# route (passt needs one to copy), a tun node every user may open.
ip link set lo up
ip link add sbx0 type veth peer name sbx1
ip link set sbx1 up
ip addr add 10.77.0.1/24 dev sbx0
ip addr add 10.77.0.2/24 dev sbx0
ip link set sbx0 up
ip route add default via 10.77.0.254
mount -t tmpfs -o mode=0755 tmpfs /dev/net
mknod -m 0666 /dev/net/tun c 10 200

MIB=$mib python3 -c '
import os, socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 7100)); s.listen()
data = b"x" * (1 << 20)
def serve(c):
    for _ in range(int(os.environ["MIB"])): c.sendall(data)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 0.5

client='import socket, time
t = time.time(); s = socket.create_connection(("10.77.0.2", 7100)); n = 0
while True:
    b = s.recv(1 << 16)
    if not b: break
    n += len(b)
d = time.time() - t
print("%d MiB in %.2f s: %.1f MiB/s" % (n >> 20, d, n / (1 << 20) / d))'
for t in "${targets[@]}"; do
    case $t in
        namespace) args=() ;;
        qemu|builtin) args=(--backend vm --vm-engine "$t") ;;
        *) echo "net-throughput.sh: unknown target $t" >&2; exit 1 ;;
    esac
    printf '%-10s ' "$t:"
    "$sandbox" run "${args[@]}" --net user --timeout 3600 -- python3 -c "$client"
done

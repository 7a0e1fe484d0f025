#!/usr/bin/env bash
# Boot-test the sandbox guest kernel with a tiny static test /init.
#
# Usage: kernel-config/boot-test.sh [options]
#   --kernel PATH      vmlinux to boot (default: the last line printed by kernel-config/build.sh, i.e. a
#                      cached build; the build runs first if nothing is cached)
#   --kvm              boot with -enable-kvm (plus the PVM boot options when /dev/kvm is kvm_pvm)
#   --initcall-debug   boot with initcall_debug and print the slowest initcalls
#   --no-devices       boot without the virtio-9p share and the virtio-serial ports
#   --append STR       extra kernel command-line options
#   --keep             keep the temporary directory (printed) for inspection
#   --timeout SECS     kill QEMU after SECS seconds (default 60 under TCG, 240 with --kvm)
#
# The test /init (C source below, compiled with `gcc -static`, packed uncompressed with cpio) checks, as PID 1:
# fork+exec of a static program, user+pid+mount+net+uts+ipc namespaces, proc and cgroup2 mounts (cpu, memory,
# pids controllers, a pids limit and a memory limit that OOM-kills), a seccomp filter, the Landlock ABI, a
# virtio-9p share, virtio-serial ports, and finally reboot(RB_AUTOBOOT), which with reboot=k and QEMU's i8042
# device ends the `-no-reboot` VM. Every check prints "PASS name" or "FAIL name: why"; this script exits 0
# only when all expected checks passed and QEMU exited by itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=""
kvm=0
initcall_debug=0
devices=1
keep=0
extra_append=""
timeout_s=""
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --kvm) kvm=1; shift ;;
        --initcall-debug) initcall_debug=1; shift ;;
        --no-devices) devices=0; shift ;;
        --append) extra_append=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        --timeout) timeout_s=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "boot-test.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ -z "$kernel" ]; then
    kernel=$("$here/build.sh" | tail -n 1)
fi
[ -f "$kernel" ] || { echo "boot-test.sh: no kernel at $kernel" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "boot-test.sh: qemu-system-x86_64 not found" >&2; exit 1; }
command -v gcc >/dev/null || { echo "boot-test.sh: gcc not found" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-boot-test.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT

cat > "$tmp/init.c" <<'EOF'
/* Test PID 1 for the sandbox guest kernel. Static, no dependencies beyond libc. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

static int failures;
static double t0;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pass(const char *name, const char *fmt, ...) {
    va_list ap;
    printf("PASS %s", name);
    if (fmt) { printf(": "); va_start(ap, fmt); vprintf(fmt, ap); va_end(ap); }
    printf("  [t=%.3fs]\n", now());
    fflush(stdout);
}

static void fail(const char *name, const char *fmt, ...) {
    va_list ap;
    failures++;
    printf("FAIL %s: ", name);
    va_start(ap, fmt); vprintf(fmt, ap); va_end(ap);
    printf(" (errno %d %s)\n", errno, strerror(errno));
    fflush(stdout);
}

static int read_file(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    while (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
    return (int)n;
}

static int write_file(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, s, strlen(s));
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

/* Wait for a child, return its exit code, or 128+signal. */
static int wait_child(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

static void check_exec(const char *self) {
    double t = now();
    pid_t pid = fork();
    if (pid == 0) {
        execl(self, self, "child-hello", (char *)NULL);
        _exit(127);
    }
    int rc = wait_child(pid);
    if (rc == 42) pass("fork_exec", "static child exited 42 in %.3fs", now() - t);
    else fail("fork_exec", "child returned %d", rc);
}

/* In the new namespaces: we must be PID 1 with a fresh /proc, uid 0 mapped, a private hostname and a
 * working loopback. */
static int in_namespaces(void) {
    if (getpid() != 1) { printf("  ns: getpid=%d\n", getpid()); return 1; }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) { perror("  ns: make-private"); return 2; }
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) { perror("  ns: mount proc"); return 3; }
    char buf[256];
    if (readlink("/proc/self", buf, sizeof buf) < 0 || strcmp(buf, "1") != 0) { printf("  ns: /proc/self\n"); return 4; }
    if (sethostname("sandbox", 7)) { perror("  ns: sethostname"); return 5; }
    /* Loopback: bring lo up, then a TCP round trip over 127.0.0.1. */
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr)) { perror("  ns: SIOCGIFFLAGS"); return 6; }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) { perror("  ns: SIOCSIFFLAGS"); return 7; }
    close(s);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(4242), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) { perror("  ns: bind/listen"); return 8; }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof a)) { perror("  ns: connect"); return 9; }
    int x = accept(l, NULL, NULL);
    if (x < 0 || write(c, "k", 1) != 1 || read(x, buf, 1) != 1 || buf[0] != 'k') { perror("  ns: tcp"); return 10; }
    return 0;
}

static void check_namespaces(void) {
    pid_t pid = fork();
    if (pid == 0) {
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWTIME)) {
            perror("  unshare");
            _exit(20);
        }
        if (write_file("/proc/self/uid_map", "0 0 1") || write_file("/proc/self/setgroups", "deny") ||
            write_file("/proc/self/gid_map", "0 0 1")) {
            perror("  id maps");
            _exit(21);
        }
        pid_t inner = fork(); /* first child in the new PID (and time) namespace: PID 1 there */
        if (inner == 0) _exit(in_namespaces());
        _exit(wait_child(inner));
    }
    int rc = wait_child(pid);
    if (rc == 0) pass("namespaces", "user+pid+mount+net+uts+ipc+time: PID 1 inside, own /proc, lo TCP ok");
    else fail("namespaces", "child returned %d", rc);
}

static void check_cgroups(void) {
    char buf[512];
    mkdir("/sys/fs/cgroup", 0755);
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL)) { fail("cgroup2", "mount"); return; }
    if (read_file("/sys/fs/cgroup/cgroup.controllers", buf, sizeof buf) < 0) { fail("cgroup2", "read controllers"); return; }
    if (!strstr(buf, "cpu") || !strstr(buf, "memory") || !strstr(buf, "pids")) { errno = 0; fail("cgroup2", "controllers '%s'", buf); return; }
    pass("cgroup2", "controllers: %s", buf);
    if (write_file("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +pids")) { fail("cgroup2_limits", "subtree_control"); return; }
    mkdir("/sys/fs/cgroup/t", 0755);
    if (write_file("/sys/fs/cgroup/t/pids.max", "4") || write_file("/sys/fs/cgroup/t/memory.max", "4194304") ||
        write_file("/sys/fs/cgroup/t/cpu.max", "50000 100000")) { fail("cgroup2_limits", "write limits"); return; }
    /* pids: a child in the cgroup tries to fork 10 times; must hit EAGAIN. */
    pid_t pid = fork();
    if (pid == 0) {
        char me[32];
        snprintf(me, sizeof me, "%d", getpid());
        if (write_file("/sys/fs/cgroup/t/cgroup.procs", me)) _exit(30);
        int made = 0, err = 0;
        pid_t kids[10];
        for (int i = 0; i < 10; i++) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) { err = errno; break; }
            kids[made++] = p;
        }
        for (int i = 0; i < made; i++) { kill(kids[i], SIGKILL); waitpid(kids[i], NULL, 0); }
        /* pids.max=4: this process + 3 children, then EAGAIN */
        _exit(made == 3 && err == EAGAIN ? 0 : 50 + made);
    }
    int rc = wait_child(pid);
    if (rc == 0) pass("cgroup2_pids", "pids.max=4 enforced (4th fork -> EAGAIN)");
    else fail("cgroup2_pids", "child returned %d", rc);
    /* memory: allocate and touch 8 MiB with memory.max=4 MiB: must be OOM-killed (small: page faults are slow under PVM). */
    pid = fork();
    if (pid == 0) {
        char me[32];
        snprintf(me, sizeof me, "%d", getpid());
        if (write_file("/sys/fs/cgroup/t/cgroup.procs", me)) _exit(30);
        size_t len = 8 << 20;
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) _exit(33);
        for (size_t i = 0; i < len; i += 4096) p[i] = 1;
        _exit(34);
    }
    rc = wait_child(pid);
    read_file("/sys/fs/cgroup/t/memory.events", buf, sizeof buf);
    char *k = strstr(buf, "oom_kill ");
    if (rc == 128 + SIGKILL && k && atoi(k + 9) >= 1) pass("cgroup2_memory", "memory.max=4M: OOM-killed, oom_kill=%d", atoi(k + 9));
    else { errno = 0; fail("cgroup2_memory", "child returned %d, memory.events: %s", rc, buf); }
    if (read_file("/sys/fs/cgroup/t/cpu.max", buf, sizeof buf) > 0 && strcmp(buf, "50000 100000") == 0) pass("cgroup2_cpu", "cpu.max=%s", buf);
    else { errno = 0; fail("cgroup2_cpu", "cpu.max '%s'", buf); }
}

static void check_seccomp(void) {
    pid_t pid = fork();
    if (pid == 0) {
        /* getppid() -> EPERM-like errno 77, everything else allowed. */
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 77),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) _exit(40);
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) _exit(41);
        errno = 0;
        long r = syscall(SYS_getppid);
        _exit(r == -1 && errno == 77 ? 0 : 42);
    }
    int rc = wait_child(pid);
    if (rc == 0) pass("seccomp", "filter installed, getppid -> errno 77");
    else fail("seccomp", "child returned %d", rc);
}

static void check_landlock(void) {
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi >= 1) pass("landlock", "ABI %ld", abi);
    else fail("landlock", "landlock_create_ruleset returned %ld", abi);
    char lsm[128] = "";
    mkdir("/sys/kernel/security", 0755);
    if (mount("securityfs", "/sys/kernel/security", "securityfs", 0, NULL) == 0 &&
        read_file("/sys/kernel/security/lsm", lsm, sizeof lsm) >= 0)
        printf("  lsm: %s\n", lsm);
}

static void check_9p(void) {
    char buf[256];
    mkdir("/mnt", 0755);
    if (mount("share0", "/mnt", "9p", 0, "trans=virtio,version=9p2000.L")) { fail("virtio_9p", "mount share0"); return; }
    if (read_file("/mnt/hello.txt", buf, sizeof buf) < 0) { fail("virtio_9p", "read /mnt/hello.txt"); return; }
    int fd = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int w = fd >= 0 && write(fd, "written by the guest\n", 21) == 21;
    if (fd >= 0) close(fd);
    pass("virtio_9p", "read '%s', write %s", buf, w ? "ok" : "failed");
}

static void check_ports(void) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int found = 0;
    if (!d) { fail("virtio_ports", "no /sys/class/virtio-ports"); return; }
    while ((e = readdir(d))) {
        char path[300], name[128] = "", dev[300];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        read_file(path, name, sizeof name);
        snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
        struct stat st;
        int have_dev = stat(dev, &st) == 0 && S_ISCHR(st.st_mode);
        printf("  port %s name=%s dev=%s\n", e->d_name, name, have_dev ? dev : "MISSING");
        if (strcmp(name, "sandbox.control") == 0 && have_dev) {
            int fd = open(dev, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                const char msg[] = "hello from the guest over sandbox.control\n";
                if (write(fd, msg, sizeof msg - 1) == (ssize_t)(sizeof msg - 1)) found = 1;
                close(fd);
            }
        }
    }
    closedir(d);
    if (found) pass("virtio_ports", "sandbox.control found and written");
    else { errno = 0; fail("virtio_ports", "no writable sandbox.control port"); }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child-hello") == 0) return 42;
    t0 = now();
    /* stdio on /dev/console is line-buffered at best; keep output ordered. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("TEST-INIT pid=%d uptime_at_init=%.3fs\n", getpid(), t0);
    if (getpid() == 1) pass("pid1", "/init is PID 1");
    else { errno = 0; fail("pid1", "pid %d", getpid()); }
    /* Unknown key=value kernel parameters reach PID 1 as environment variables. Not "-- args": QEMU microvm
     * appends its virtio_mmio.device= entries at the end of the command line, they must stay before "--". */
    int want_devices = getenv("sbtest_devices") && strcmp(getenv("sbtest_devices"), "1") == 0;
    if (mount("proc", "/proc", "proc", 0, NULL) && (mkdir("/proc", 0555), mount("proc", "/proc", "proc", 0, NULL)))
        fail("mount_proc", "mount");
    else pass("mount_proc", NULL);
    mkdir("/sys", 0555);
    if (mount("sysfs", "/sys", "sysfs", 0, NULL)) fail("mount_sysfs", "mount");
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL)) fail("mount_devtmpfs", "mount");
    mkdir("/tmp", 01777);
    if (mount("tmpfs", "/tmp", "tmpfs", 0, NULL)) fail("mount_tmpfs", "mount");
    char buf[256];
    if (read_file("/proc/version", buf, sizeof buf) > 0) printf("  %s\n", buf);
    check_exec(argv[0]);
    check_namespaces();
    check_cgroups();
    check_seccomp();
    check_landlock();
    if (want_devices) { check_9p(); check_ports(); }
    printf("TEST-INIT done: %d failure(s), %.3fs in /init, uptime %.3fs\n", failures, now() - t0, now());
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    printf("FAIL reboot: returned (errno %d)\n", errno);
    for (;;) pause();
}
EOF

gcc -static -O2 -Wall -o "$tmp/rootfs-init" "$tmp/init.c"
mkdir -p "$tmp/root"
mv "$tmp/rootfs-init" "$tmp/root/init"
(cd "$tmp/root" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) > "$tmp/init.cpio"

append="console=ttyS0 reboot=k panic=-1"
if [ "$initcall_debug" = 1 ]; then append="$append initcall_debug loglevel=8"; else append="$append quiet"; fi
accel=(-accel tcg -cpu max)
if [ "$kvm" = 1 ]; then
    accel=(-enable-kvm)  # -cpu host fails on PVM (MSR 0x10a); the default model works
    if [ -d /sys/module/kvm_pvm ]; then
        # PVM (software KVM): the options the unmodified guest needs plus our patches' switch (README.md).
        append="$append noxsave clearcpuid=popcnt,smap,cx16 sandbox_pvm=1"
    fi
fi
[ -n "$extra_append" ] && append="$append $extra_append"
devargs=()
if [ "$devices" = 1 ]; then
    mkdir -p "$tmp/share"
    echo "hello from the host" > "$tmp/share/hello.txt"
    devargs=(
        -fsdev "local,id=f0,path=$tmp/share,security_model=none"
        -device virtio-9p-device,fsdev=f0,mount_tag=share0
        -device virtio-serial-device
        -chardev "file,id=ctl,path=$tmp/control.out"
        -device virtserialport,chardev=ctl,name=sandbox.control
    )
    append="$append sbtest_devices=1"
fi

cmd=(qemu-system-x86_64 -M microvm,acpi=off "${accel[@]}" -m 256 -smp 1 -nodefaults -no-user-config -nographic
     -serial stdio -no-reboot -device i8042 -kernel "$kernel" -initrd "$tmp/init.cpio" -append "$append"
     "${devargs[@]}")
echo "boot-test: ${cmd[*]@Q}"
start=$(date +%s.%N)
set +e
timeout "${timeout_s:-$([ "$kvm" = 1 ] && echo 240 || echo 60)}" "${cmd[@]}" < /dev/null | tee "$tmp/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
wall=$(echo "$end - $start" | bc)
echo "boot-test: qemu exit code $qemu_rc, wall ${wall}s"

if [ "$initcall_debug" = 1 ]; then
    echo "boot-test: slowest initcalls (usecs):"
    grep -a 'initcall .* returned .* after' "$tmp/console.log" |
        sed -E 's/.*initcall ([^ ]+) returned -?[0-9]+ after ([0-9]+) usecs.*/\2 \1/' | sort -rn | head -15
    n=$(grep -ac 'initcall .* returned' "$tmp/console.log" || true)
    sum=$(grep -a 'initcall .* returned .* after' "$tmp/console.log" |
        sed -E 's/.*after ([0-9]+) usecs.*/\1/' | paste -sd+ | bc)
    echo "boot-test: $n initcalls, ${sum} usecs in total"
fi

ok=1
[ "$qemu_rc" = 0 ] || { echo "boot-test: QEMU did not exit cleanly (rc $qemu_rc)"; ok=0; }
expected=(pid1 mount_proc fork_exec namespaces cgroup2 cgroup2_pids cgroup2_memory cgroup2_cpu seccomp landlock)
[ "$devices" = 1 ] && expected+=(virtio_9p virtio_ports)
for c in "${expected[@]}"; do
    grep -aq "^PASS $c" "$tmp/console.log" || { echo "boot-test: check $c did not pass"; ok=0; }
done
if grep -aq '^FAIL' "$tmp/console.log"; then ok=0; fi
if [ "$devices" = 1 ]; then
    [ -s "$tmp/control.out" ] && echo "boot-test: host got on sandbox.control: $(cat "$tmp/control.out")"
    [ -f "$tmp/share/from-guest.txt" ] && echo "boot-test: host sees guest write: $(cat "$tmp/share/from-guest.txt")"
fi
if [ "$ok" = 1 ]; then echo "boot-test: ALL PASSED"; else echo "boot-test: FAILED"; exit 1; fi

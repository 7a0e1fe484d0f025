// What a sandbox's PID 1 that shares its caller's memory (clone with CLONE_VM, as the `floor-layers-vm`
// case of sandbox-bench does) would expose. SECURITY.md ("Why the init is a copy of its caller") cites it.
//
//   gcc -O2 -o /tmp/clone-vm-init docs/experiments/clone-vm-init.c
//   mkdir -p /tmp/cvi && cp /tmp/clone-vm-init /tmp/cvi/ && chmod 755 /tmp/cvi /tmp/cvi/clone-vm-init
//   setpriv --reuid=65534 --regid=65534 --clear-groups /tmp/cvi/clone-vm-init dumpable --token=hunter2
//   setpriv --reuid=65534 --regid=65534 --clear-groups /tmp/cvi/clone-vm-init nondumpable --token=hunter2
//
// The caller clones an init into new user, PID and mount namespaces with CLONE_VM, writes its one-id maps
// (as the library does for a user without subordinate ids), and the init starts a "program" (the same uid,
// as in the library's default one-id map) that tries /proc/1/cmdline and /proc/1/mem. Measured on kernel
// 6.18: with the caller's memory dumpable (the normal state of a process), the program reads AND WRITES
// the caller's live memory through /proc/1/mem (the caller's secret is overwritten); an init that makes
// itself not dumpable makes its caller not dumpable too (one mm, one flag): /proc/1/mem is then refused,
// but the caller loses core dumps and debugger access while any sandbox runs; and /proc/1/cmdline shows
// the caller's arguments either way (the kernel does no access check for it).
//
// Harmless: it writes only its own memory, and only in namespaces it made.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char secret[32] = "caller-secret-0123456789";
static int make_nondumpable;
static int release[2];

static int program(void *arg) {
    (void)arg;
    char buf[256];
    int fd = open("/proc/1/cmdline", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    for (ssize_t i = 0; i < n; i++)
        if (!buf[i]) buf[i] = ' ';
    if (n >= 0) buf[n] = 0;
    dprintf(2, "  program: /proc/1/cmdline = %s\n", n > 0 ? buf : "(unreadable)");
    int mem = open("/proc/1/mem", O_RDWR);
    if (mem < 0) {
        dprintf(2, "  program: open /proc/1/mem: %s\n", strerror(errno));
        _exit(0);
    }
    char got[32] = {0};
    if (pread(mem, got, 24, (off_t)(unsigned long)secret) == 24)
        dprintf(2, "  program: read the caller's memory: %s\n", got);
    if (pwrite(mem, "OVERWRITTEN-BY-SANDBOX!!", 24, (off_t)(unsigned long)secret) == 24)
        dprintf(2, "  program: wrote the caller's memory\n");
    _exit(0);
}

static int init(void *arg) {
    (void)arg;
    char c;
    if (read(release[0], &c, 1) != 1) _exit(1);
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) || mount("proc", "/proc", "proc", 0, NULL)) {
        perror("  init: mount /proc");
        _exit(1);
    }
    if (make_nondumpable) prctl(PR_SET_DUMPABLE, 0);
    static char stack[1 << 16];
    pid_t p = clone(program, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
    if (p > 0) waitpid(p, NULL, 0);
    sleep(1);
    _exit(0);
}

static void write_file(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) perror(path);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    make_nondumpable = argc > 1 && !strcmp(argv[1], "nondumpable");
    if (pipe(release)) return 1;
    size_t size = 1 << 20;
    char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return 1;
    char map[64];
    uid_t uid = getuid();
    gid_t gid = getgid();
    pid_t pid = clone(init, stack + size, CLONE_VM | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | SIGCHLD, NULL);
    if (pid < 0) {
        perror("clone");
        return 1;
    }
    write_file(pid, "setgroups", "deny");
    snprintf(map, sizeof map, "0 %d 1", uid);
    write_file(pid, "uid_map", map);
    snprintf(map, sizeof map, "0 %d 1", gid);
    write_file(pid, "gid_map", map);
    if (write(release[1], "x", 1) != 1) return 1;
    usleep(300000);
    printf("  caller: dumpable = %d while its sandbox's init runs\n", prctl(PR_GET_DUMPABLE));
    waitpid(pid, NULL, 0);
    printf("  caller: its secret after the run: %s\n", secret);
    return 0;
}

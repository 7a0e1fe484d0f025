/* Escape probe for tests/escape.rs: compiled on the host at test time, installed set-user-ID root or with
 * file capabilities in a read-write bind, and run inside the sandbox. It prints who it runs as, its effective
 * capabilities, and whether it can open the file named by argv[1] (a host file only host root may read).
 * It changes nothing. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    uid_t r = 0, e = 0, s = 0;
    getresuid(&r, &e, &s);
    char caps[32] = "?";
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "CapEff: %31s", caps) == 1) {
            break;
        }
    }
    const char *opened = "not-tried";
    if (argc > 1) {
        int fd = open(argv[1], O_RDONLY);
        if (fd >= 0) {
            opened = "OK";
        } else if (errno == EACCES) {
            opened = "EACCES";
        } else if (errno == EPERM) {
            opened = "EPERM";
        } else {
            opened = strerror(errno);
        }
    }
    printf("ruid=%u euid=%u suid=%u caps=%s open=%s\n", r, e, s, caps, opened);
    return 0;
}

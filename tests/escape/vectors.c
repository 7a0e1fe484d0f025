/* Escape probes `vector_registers` and `vector_registers_between_runs`.
   `vectors SECONDS`: one process holds its own values in the AVX registers ymm0-15 while a sibling runs
   glibc's string functions; every round the holder checks its registers. A guest kernel that cannot save AVX
   state (ours on PVM, booted with noxsave) keeps them intact only if nothing else in the guest uses AVX,
   which is why the VMM hands every guest process glibc tunables without AVX. Prints "clobbered=N" (rounds on
   stderr) and exits 0 when N is 0, else 1.
   `vectors plant`: fills ymm0-15 with 0xc3 and kills itself with SIGKILL while holding them (a program
   killed mid-computation). `vectors read`: prints "leaked=N", the number of ymm registers whose upper half
   still holds 0xc3 when it starts (run it as the next run of the same warm VM).
   Every mode prints "avx=absent" and exits 3 when the CPU or kernel offers no AVX. Harmless: it only
   computes. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* AVX usable: the CPU has it and the kernel enabled its state in XCR0 (OSXSAVE, bits 1 and 2). */
static int avx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;
}

/* Assembly: ymm0-15 <- the 512 bytes at operand %0. */
#define LOAD_YMM0_15                                                                                      \
    "vmovdqu 0(%0),%%ymm0\n vmovdqu 32(%0),%%ymm1\n vmovdqu 64(%0),%%ymm2\n vmovdqu 96(%0),%%ymm3\n"           \
    "vmovdqu 128(%0),%%ymm4\n vmovdqu 160(%0),%%ymm5\n vmovdqu 192(%0),%%ymm6\n vmovdqu 224(%0),%%ymm7\n"      \
    "vmovdqu 256(%0),%%ymm8\n vmovdqu 288(%0),%%ymm9\n vmovdqu 320(%0),%%ymm10\n vmovdqu 352(%0),%%ymm11\n"    \
    "vmovdqu 384(%0),%%ymm12\n vmovdqu 416(%0),%%ymm13\n vmovdqu 448(%0),%%ymm14\n vmovdqu 480(%0),%%ymm15\n"

/* Loads ymm0-15 from `in`, spins a while, stores them to `out`. */
static void hold(const unsigned char *in, unsigned char *out) {
    __asm__ volatile(
        LOAD_YMM0_15
        "mov $300000, %%ecx\n 1: dec %%ecx\n jnz 1b\n"
        "vmovdqu %%ymm0,0(%1)\n vmovdqu %%ymm1,32(%1)\n vmovdqu %%ymm2,64(%1)\n vmovdqu %%ymm3,96(%1)\n"
        "vmovdqu %%ymm4,128(%1)\n vmovdqu %%ymm5,160(%1)\n vmovdqu %%ymm6,192(%1)\n vmovdqu %%ymm7,224(%1)\n"
        "vmovdqu %%ymm8,256(%1)\n vmovdqu %%ymm9,288(%1)\n vmovdqu %%ymm10,320(%1)\n vmovdqu %%ymm11,352(%1)\n"
        "vmovdqu %%ymm12,384(%1)\n vmovdqu %%ymm13,416(%1)\n vmovdqu %%ymm14,448(%1)\n vmovdqu %%ymm15,480(%1)\n"
        "vzeroupper\n"
        :
        : "r"(in), "r"(out)
        : "rcx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* glibc's string functions on many sizes, as any program calls them. */
static void work(double until) {
    static char a[8192], b[8192];
    volatile size_t sink = 0;
    for (unsigned i = 0; now() < until; i++) {
        size_t n = 1 + (i * 97) % 4000;
        memset(a, 'a' + i % 26, n);
        a[n] = 0;
        memcpy(b, a, n + 1);
        memmove(b + 1, b, n);
        sink += strlen(a) + (memchr(a, 0, n + 1) != NULL) + (size_t)strcmp(a, b) + (size_t)memcmp(a, b, n);
        sink += (strchr(a, 'z') != NULL) + strnlen(b, n);
        strcpy(b, a);
    }
}

/* Fills ymm0-15 with 0xc3 and sends itself SIGKILL without touching them again. */
static void plant(void) {
    static unsigned char fill[512] __attribute__((aligned(32)));
    memset(fill, 0xc3, sizeof fill);
    long pid = getpid();
    __asm__ volatile(
        LOAD_YMM0_15
        "mov %1, %%rdi\n mov $9, %%esi\n mov $62, %%eax\n syscall\n 1: pause\n jmp 1b\n"
        :
        : "r"(fill), "r"(pid)
        : "rax", "rdi", "rsi", "rcx", "r11", "memory");
}

/* How many of ymm0-15 have 0xc3 in all 16 bytes of their upper half. */
static int planted(void) {
    unsigned char up[16 * 16];
    __asm__ volatile(
        "vextractf128 $1,%%ymm0,0(%0)\n vextractf128 $1,%%ymm1,16(%0)\n vextractf128 $1,%%ymm2,32(%0)\n"
        "vextractf128 $1,%%ymm3,48(%0)\n vextractf128 $1,%%ymm4,64(%0)\n vextractf128 $1,%%ymm5,80(%0)\n"
        "vextractf128 $1,%%ymm6,96(%0)\n vextractf128 $1,%%ymm7,112(%0)\n vextractf128 $1,%%ymm8,128(%0)\n"
        "vextractf128 $1,%%ymm9,144(%0)\n vextractf128 $1,%%ymm10,160(%0)\n vextractf128 $1,%%ymm11,176(%0)\n"
        "vextractf128 $1,%%ymm12,192(%0)\n vextractf128 $1,%%ymm13,208(%0)\n vextractf128 $1,%%ymm14,224(%0)\n"
        "vextractf128 $1,%%ymm15,240(%0)\n"
        :
        : "r"(up)
        : "memory");
    int found = 0;
    for (int r = 0; r < 16; r++) {
        int all = 1;
        for (int i = 0; i < 16; i++) all &= up[r * 16 + i] == 0xc3;
        found += all;
    }
    return found;
}

int main(int argc, char **argv) {
    /* Read before anything else of this program runs. */
    int leaked = avx_usable() ? planted() : 0;
    if (!avx_usable()) {
        printf("avx=absent\n");
        return 3;
    }
    if (argc > 1 && !strcmp(argv[1], "plant")) {
        plant();
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "read")) {
        printf("leaked=%d\n", leaked);
        return leaked ? 1 : 0;
    }
    double seconds = argc > 1 ? atof(argv[1]) : 3;
    pid_t worker = fork();
    if (worker == 0) {
        work(now() + seconds);
        _exit(0);
    }
    unsigned char in[512] __attribute__((aligned(32))), out[512] __attribute__((aligned(32)));
    for (int i = 0; i < 512; i++) in[i] = (unsigned char)(i * 7 + 1);
    long rounds = 0, clobbered = 0;
    for (double end = now() + seconds; now() < end; rounds++) {
        memset(out, 0, sizeof out);
        hold(in, out);
        for (int i = 0; i < 512; i++)
            if (out[i] != in[i]) { clobbered++; break; }
    }
    int status;
    waitpid(worker, &status, 0);
    fprintf(stderr, "rounds=%ld worker=%d\n", rounds, status);
    printf("clobbered=%ld\n", clobbered);
    if (rounds < 20) {
        printf("too few rounds (%ld) to tell\n", rounds);
        return 1;
    }
    return clobbered || status != 0 ? 1 : 0;
}

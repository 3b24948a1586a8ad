/* Whether a forked child that runs much of its program's code is cheaper when fork
 * copies the code's page-table entries (docs/DESIGN.md, "Where a spawn's time goes").
 *
 * Fork copies no page-table entries for a file mapping that has no anonymous page
 * (the kernel's `vma_needs_copy`): the child faults in each page of code it runs (16
 * pages a fault, with fault-around). Giving the code's mapping one anonymous page (a
 * copy-on-write of one page, made writable for a moment with `mprotect`) makes fork
 * copy every present entry instead. This program forks, runs one function in each
 * 4 KiB of about 1 MB of code in the child, exits and waits, N times, and prints the
 * time per spawn and the child's faults.
 *
 *   gcc -O1 -o /tmp/fork_code_ptes benches/models/fork_code_ptes.c
 *   /tmp/fork_code_ptes plain 2000; /tmp/fork_code_ptes copied 2000   (interleaved)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* 8000 functions of about 126 bytes each: about 1 MB of code. */
#define F(n) __attribute__((noinline)) int f##n(int x) { volatile int a[64]; \
    for (int i = 0; i < 64; i++) { a[i] = x + i * (n); } \
    int s = 0; \
    for (int i = 0; i < 64; i++) { s += a[i] * (i ^ (n)); } \
    return s; }
#define F10(n) F(n##0) F(n##1) F(n##2) F(n##3) F(n##4) F(n##5) F(n##6) F(n##7) F(n##8) F(n##9)
#define F100(n) F10(n##0) F10(n##1) F10(n##2) F10(n##3) F10(n##4) F10(n##5) F10(n##6) \
    F10(n##7) F10(n##8) F10(n##9)
#define F1000(n) F100(n##0) F100(n##1) F100(n##2) F100(n##3) F100(n##4) F100(n##5) \
    F100(n##6) F100(n##7) F100(n##8) F100(n##9)
F1000(1) F1000(2) F1000(3) F1000(4) F1000(5) F1000(6) F1000(7) F1000(8)

/* One function in 32 (about one in each 4 KiB page of code). */
#define C(n) s += f##n(x);
#define C10(n) C(n##0) C(n##2) C(n##4) C(n##6) C(n##8)
#define C100(n) C10(n##0) C10(n##3) C10(n##6) C10(n##9)
#define C1000(n) C100(n##0) C100(n##1) C100(n##2) C100(n##3) C100(n##4) C100(n##5) \
    C100(n##6) C100(n##7) C100(n##8) C100(n##9)
__attribute__((noinline)) static int run_code(int x) {
    int s = 0;
    C1000(1) C1000(2) C1000(3) C1000(4) C1000(5) C1000(6) C1000(7) C1000(8)
    return s;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Gives the mapping that holds `run_code` one anonymous page. */
static int copy_one_page(void) {
    unsigned long at = (unsigned long)&run_code, lo = 0, hi = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    if (!maps) return -1;
    while (fgets(line, sizeof line, maps)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && at >= a && at < b) {
            lo = a;
            hi = b;
            break;
        }
    }
    fclose(maps);
    if (!lo || mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE | PROT_EXEC)) return -1;
    volatile char *p = (volatile char *)lo;
    p[0] = p[0];
    return mprotect((void *)lo, hi - lo, PROT_READ | PROT_EXEC);
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "plain") && strcmp(argv[1], "copied"))) {
        fprintf(stderr, "usage: %s plain|copied N\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    run_code(1);
    if (!strcmp(argv[1], "copied") && copy_one_page()) {
        perror("mprotect");
        return 1;
    }
    long faults = 0;
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            run_code(i);
            _exit(0);
        }
        int status;
        struct rusage ru;
        if (wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status)) return 1;
        faults += ru.ru_minflt;
    }
    printf("%s: %.1f us a spawn, %.1f faults a child\n", argv[1], (now_us() - t0) / n,
           (double)faults / n);
    return 0;
}

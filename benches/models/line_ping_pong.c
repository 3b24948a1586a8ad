/*
 * The floor of a hand-off through shared memory between two processes on two CPUs: they
 * pass a turn back and forth through one word, each spinning on it, so that a round trip
 * is one cache line crossing each way and nothing else. What a channel's round trip
 * (`multiproc-bench loop pipe N`) or a manager call (`loop manager_one N`) moves on top
 * of it is its own lines (the producers' position, the record) and its work; how far the
 * two CPUs are from each other shows here first (ipc/channel/README.md, "Consuming").
 *
 *   gcc -O2 -o /tmp/line_ping_pong benches/models/line_ping_pong.c
 *   /tmp/line_ping_pong 1000000
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* What a spinning look does between looks, as Rust's `std::hint::spin_loop`: on x86 a
 * `pause`, which also spares the looker the pipeline flush when the line changes. */
static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 1000000;
    if (rounds <= 0) {
        fprintf(stderr, "usage: %s ROUNDS\n", argv[0]);
        return 2;
    }
    _Atomic long *turn = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (turn == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    atomic_store(turn, 0);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        for (long i = 0; i < rounds; i++) {
            while (atomic_load_explicit(turn, memory_order_acquire) != 2 * i + 1) {
                relax();
            }
            atomic_store_explicit(turn, 2 * i + 2, memory_order_release);
        }
        _exit(0);
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < rounds; i++) {
        atomic_store_explicit(turn, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(turn, memory_order_acquire) != 2 * i + 2) {
            relax();
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the child did not end well\n");
        return 1;
    }
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.1f ns per round trip\n", ns / rounds);
    return 0;
}

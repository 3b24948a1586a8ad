"""CPython's multiprocessing.Barrier on the round workload of benches/sync.rs.

Usage: python3 mp_barrier.py ITERATIONS
This process and one child pass a two-party Barrier ITERATIONS times. Prints the seconds
the rounds took.
"""
import multiprocessing as mp
import sys
import time


def party(barrier, rounds):
    for _ in range(rounds):
        barrier.wait()


if __name__ == "__main__":
    n = int(sys.argv[1])
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    p = ctx.Process(target=party, args=(barrier, n + 1))
    p.start()
    barrier.wait()
    t = time.perf_counter()
    for _ in range(n):
        barrier.wait()
    elapsed = time.perf_counter() - t
    p.join()
    print(elapsed)

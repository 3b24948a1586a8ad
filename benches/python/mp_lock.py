"""CPython's multiprocessing.Value and its lock on the counter workload of benches/sync.rs.

Usage: python3 mp_lock.py ITERATIONS
Two processes each add 1 to a shared Value ITERATIONS/2 times, taking the Value's lock
for each increment. They start together at a barrier; prints the seconds from the
barrier until both have finished and been joined.
"""
import multiprocessing as mp
import sys
import time


def add(v, start, n):
    start.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


if __name__ == "__main__":
    n = int(sys.argv[1]) // 2
    ctx = mp.get_context("fork")
    v = ctx.Value("q", 0)
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=add, args=(v, start, n)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    t = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t
    assert v.value == 2 * n, v.value
    print(elapsed)

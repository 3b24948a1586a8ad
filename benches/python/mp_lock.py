"""CPython's multiprocessing.Value and its lock on the counter workload of benches/sync.rs.

Usage: python3 mp_lock.py ITERATIONS
Two processes each add 1 to a shared Value ITERATIONS/2 times, taking the Value's lock
for each increment. Once both are ready, this process starts the clock and tells them
to go; prints the seconds until both have finished and been joined.
"""
import multiprocessing as mp
import sys
import time


def add(v, ready, go, n):
    ready.release()
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1


if __name__ == "__main__":
    n = int(sys.argv[1]) // 2
    ctx = mp.get_context("fork")
    v = ctx.Value("q", 0)
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=add, args=(v, ready, go, n)) for _ in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t
    assert v.value == 2 * n, v.value
    print(elapsed)

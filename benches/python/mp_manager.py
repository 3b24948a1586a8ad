"""CPython's Manager().dict() on the workload of benches/src/lib.rs `manager::dict_set_get`.

Usage: python3 mp_manager.py ITERATIONS
Two processes each do ITERATIONS/2 operations on one Manager dict, alternately a set and
a get of one of 100 keys. Once both are ready, this process starts the clock and tells
them to go; prints the seconds until both have finished and been joined.
"""
import multiprocessing as mp
import sys
import time


def set_get(d, ready, go, n):
    ready.release()
    go.wait()
    for i in range(n // 2):
        d[i % 100] = i
        d[i % 100]


if __name__ == "__main__":
    n = int(sys.argv[1]) // 2
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        d = manager.dict()
        ready, go = ctx.Semaphore(0), ctx.Event()
        procs = [ctx.Process(target=set_get, args=(d, ready, go, n)) for _ in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        t = time.perf_counter()
        go.set()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t
    print(elapsed)

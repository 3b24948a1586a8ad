"""CPython's multiprocessing on the spawn + join workload of benches/spawn.rs.

Usage: python3 mp_spawn.py METHOD ITERATIONS
Starts and joins ITERATIONS processes running an empty function with the given start
method (fork, forkserver or spawn) and prints the total seconds taken, excluding the
interpreter's own start and one warm-up process (which starts the forkserver).
"""
import multiprocessing as mp
import sys
import time


def noop():
    pass


if __name__ == "__main__":
    method, n = sys.argv[1], int(sys.argv[2])
    ctx = mp.get_context(method)
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    start = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    print(time.perf_counter() - start)

"""CPython's multiprocessing.Pool and ProcessPoolExecutor on the workloads of benches/pool.rs.

Usage: python3 mp_pool.py MODE [PROCESSES] ITERATIONS
A pool of PROCESSES worker processes (2 by default; `fork` context) is started and
warmed up first; then the timed part runs ITERATIONS tasks and the script prints its
seconds:
  map       Pool.map(square, range(N)) with the default chunksize
  map1      Pool.map(square, range(N), chunksize=1)
  imap1     list(Pool.imap(square, range(N)))            (chunksize=1)
  executor  ProcessPoolExecutor: N submit() calls, then N result() calls
  as_completed  ProcessPoolExecutor: N submit() calls, then the results taken with
            concurrent.futures.as_completed
  cpu       Pool.map of N tasks that each spin for 1 ms, default chunksize
"""
import concurrent.futures as cf
import multiprocessing as mp
import sys
import time

PROCESSES = 2


def square(x):
    return x * x


def spin_ms(x):
    end = time.perf_counter() + 0.001
    i = 0
    while time.perf_counter() < end:
        i += 1
    return i


if __name__ == "__main__":
    mode, n = sys.argv[1], int(sys.argv[-1])
    if len(sys.argv) > 3:
        PROCESSES = int(sys.argv[2])
    ctx = mp.get_context("fork")
    if mode in ("executor", "as_completed"):
        with cf.ProcessPoolExecutor(PROCESSES, mp_context=ctx) as ex:
            list(ex.map(square, range(100)))
            start = time.perf_counter()
            futures = [ex.submit(square, i) for i in range(n)]
            if mode == "as_completed":
                done = sum(1 for f in cf.as_completed(futures) if f.result() is not None)
                assert done == n
            else:
                for f in futures:
                    f.result()
            elapsed = time.perf_counter() - start
    else:
        with ctx.Pool(PROCESSES) as pool:
            pool.map(square, range(100))
            start = time.perf_counter()
            if mode == "map":
                r = pool.map(square, range(n))
            elif mode == "map1":
                r = pool.map(square, range(n), chunksize=1)
            elif mode == "imap1":
                r = list(pool.imap(square, range(n)))
            elif mode == "cpu":
                r = pool.map(spin_ms, range(n))
            else:
                raise SystemExit(f"unknown mode {mode}")
            elapsed = time.perf_counter() - start
            assert len(r) == n
    print(elapsed)

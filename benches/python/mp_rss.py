"""CPython's multiprocessing on the memory workload of benches/src/lib.rs (`memory`).

Usage: python3 mp_rss.py METHOD
Starts a Pool of 4 worker processes with the given start method (fork, forkserver or
spawn), runs 1,000 trivial tasks, asks 16 tasks (one per chunk) for their worker's peak
resident set, and prints `PARENT_KIB WORKER_KIB SERVER_KIB`: this process's peak
(VmHWM), the largest worker peak and the fork server's peak (`-` without one).
"""
import multiprocessing as mp
import sys

WORKERS = 4
TASKS = 1000


def peak_kib(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def square(x):
    return x * x


def worker_peak(_):
    return peak_kib()


if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    with ctx.Pool(WORKERS) as pool:
        assert len(pool.map(square, range(TASKS))) == TASKS
        worker = max(pool.map(worker_peak, range(4 * WORKERS), chunksize=1))
        parent = peak_kib()
        server = "-"
        if sys.argv[1] == "forkserver":
            from multiprocessing import forkserver

            server = peak_kib(forkserver._forkserver._forkserver_pid)
    print(parent, worker, server)

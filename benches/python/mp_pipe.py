"""CPython's multiprocessing.Pipe on the round-trip workload of benches/ipc.rs.

Usage: python3 mp_pipe.py ITERATIONS
Sends a small integer to a child process over a duplex Pipe and waits for it to come
back plus one, ITERATIONS times. Prints the seconds the round trips took.
"""
import multiprocessing as mp
import sys
import time


def pong(conn):
    while True:
        n = conn.recv()
        if n is None:
            return
        conn.send(n + 1)


if __name__ == "__main__":
    n = int(sys.argv[1])
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=pong, args=(theirs,))
    p.start()
    ours.send(0)
    ours.recv()
    start = time.perf_counter()
    x = 0
    for _ in range(n):
        ours.send(x)
        x = ours.recv()
    elapsed = time.perf_counter() - start
    ours.send(None)
    p.join()
    print(elapsed)

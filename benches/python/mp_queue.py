"""CPython's multiprocessing.Queue on the throughput workloads of benches/ipc.rs.

Usage: python3 mp_queue.py SIZE [backlog | mpmc PROCESSES] ITERATIONS
A producer (this process) puts ITERATIONS items into a Queue and a consumer process gets
them: small integers when SIZE is 0, otherwise bytes objects of SIZE bytes. With
`backlog`, every item is put before the consumer starts. Prints the seconds from the
first put until the consumer has got the last item and exited.

With `mpmc PROCESSES`, PROCESSES producer processes and as many consumer processes share
the queue, each moving ITERATIONS / PROCESSES items; the seconds are counted from the
go, given once all have started, until all are joined.
"""
import multiprocessing as mp
import sys
import time


def consume(q, n):
    for _ in range(n):
        q.get()


def side(q, producer, item, n, ready, go):
    ready.release()
    go.wait()
    if producer:
        for _ in range(n):
            q.put(item)
    else:
        for _ in range(n):
            q.get()


def mpmc(ctx, q, item, processes, n):
    each = n // processes
    ready, go = ctx.Semaphore(0), ctx.Event()
    sides = [
        ctx.Process(target=side, args=(q, i % 2 == 0, item, each, ready, go))
        for i in range(2 * processes)
    ]
    for s in sides:
        s.start()
    for _ in sides:
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for s in sides:
        s.join()
    return time.perf_counter() - start


if __name__ == "__main__":
    size, n = int(sys.argv[1]), int(sys.argv[-1])
    backlog = "backlog" in sys.argv[2:-1]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    item = b"x" * size if size else 12345
    if "mpmc" in sys.argv[2:-1]:
        processes = int(sys.argv[sys.argv.index("mpmc") + 1])
        print(mpmc(ctx, q, item, processes, n))
        sys.exit(0)
    c = ctx.Process(target=consume, args=(q, n))
    if not backlog:
        c.start()
    start = time.perf_counter()
    for _ in range(n):
        q.put(item)
    if backlog:
        c.start()
    c.join()
    print(time.perf_counter() - start)

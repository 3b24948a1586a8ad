"""CPython's multiprocessing.Queue on the throughput workloads of benches/ipc.rs.

Usage: python3 mp_queue.py SIZE [backlog] ITERATIONS
A producer (this process) puts ITERATIONS items into a Queue and a consumer process gets
them: small integers when SIZE is 0, otherwise bytes objects of SIZE bytes. With
`backlog`, every item is put before the consumer starts. Prints the seconds from the
first put until the consumer has got the last item and exited.
"""
import multiprocessing as mp
import sys
import time


def consume(q, n):
    for _ in range(n):
        q.get()


if __name__ == "__main__":
    size, n = int(sys.argv[1]), int(sys.argv[-1])
    backlog = "backlog" in sys.argv[2:-1]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    item = b"x" * size if size else 12345
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

"""Celery 5 and RQ on the workloads of benches/src/lib.rs `cluster`, on the same
redis-server as multiproc's cluster.

Run with the interpreter of the venv the benchmark makes (target/cluster-bench-venv),
with this folder as the working directory (the workers import this module):

  python cluster_peers.py worker celery URL     # a Celery worker: prefork, 2 processes
  python cluster_peers.py worker rq URL         # one RQ worker (start two)
  python cluster_peers.py run celery|rq WORKLOAD N URL

WORKLOAD is `throughput` (N trivial tasks submitted, then every result gathered:
prints the seconds), `rtt50` / `rtt99` (N round trips one after the other: prints the
median / 99th percentile latency times N, in seconds, so that the caller's per-operation
figure is that percentile), or `cpu` (N tasks that spin 1 ms, submitted then gathered).
Before the clock starts, the script waits for one task to round-trip (the workers are
up and warm).
"""
import os
import sys
import time

QUEUE = "bench"


def square(x):
    return x * x


def spin(ms):
    end = time.perf_counter() + ms / 1000.0
    i = 0
    while time.perf_counter() < end:
        i += 1
    return i


def celery_app(url):
    from celery import Celery

    app = Celery("cluster_peers", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    app.task(name="bench.square")(square)
    app.task(name="bench.spin")(spin)
    return app


# The Celery worker imports `cluster_peers:app`.
app = celery_app(os.environ["BENCH_REDIS_URL"]) if "BENCH_REDIS_URL" in os.environ else None


def percentile(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def run_celery(workload, n, url):
    a = celery_app(url)
    sq, sp = a.tasks["bench.square"], a.tasks["bench.spin"]
    sq.delay(1).get(timeout=120)
    if workload in ("throughput", "cpu"):
        task, arg = (sq, 7) if workload == "throughput" else (sp, 1)
        t = time.perf_counter()
        results = [task.delay(arg) for _ in range(n)]
        for r in results:
            r.get(timeout=600)
        return time.perf_counter() - t
    lat = []
    for i in range(n):
        t = time.perf_counter()
        sq.delay(i).get(timeout=60)
        lat.append(time.perf_counter() - t)
    return percentile(lat, 0.5 if workload == "rtt50" else 0.99) * n


def run_rq(workload, n, url):
    from redis import Redis
    from rq import Queue

    # The worker imports the functions by module name, so they are named through it
    # (not as `__main__.square`).
    import cluster_peers as m

    square, spin = m.square, m.spin
    q = Queue(QUEUE, connection=Redis.from_url(url))

    def wait(job):
        r = job.latest_result(timeout=600)
        if r is None or r.type != r.Type.SUCCESSFUL:
            raise RuntimeError(f"job {job.id} failed: {r}")
        return r.return_value

    wait(q.enqueue(square, 1))
    if workload in ("throughput", "cpu"):
        f, arg = (square, 7) if workload == "throughput" else (spin, 1)
        t = time.perf_counter()
        jobs = [q.enqueue(f, arg) for _ in range(n)]
        for j in jobs:
            wait(j)
        return time.perf_counter() - t
    lat = []
    for i in range(n):
        t = time.perf_counter()
        wait(q.enqueue(square, i))
        lat.append(time.perf_counter() - t)
    return percentile(lat, 0.5 if workload == "rtt50" else 0.99) * n


def main():
    if sys.argv[1] == "worker":
        which, url = sys.argv[2], sys.argv[3]
        if which == "celery":
            a = celery_app(url)
            a.worker_main(
                [
                    "worker",
                    "--concurrency=2",
                    "--pool=prefork",
                    f"--queues={QUEUE}",
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel=WARNING",
                ]
            )
        else:
            from redis import Redis
            from rq import Queue, Worker

            conn = Redis.from_url(url)
            Worker([Queue(QUEUE, connection=conn)], connection=conn).work(logging_level="WARNING")
        return
    _, which, workload, n, url = sys.argv[1:6]
    run = run_celery if which == "celery" else run_rq
    print(run(workload, int(n), url))


if __name__ == "__main__":
    main()

"""CPython's multiprocessing.Event on the hand-off workload of benches/sync.rs.

Usage: python3 mp_event.py ITERATIONS
Two processes hand control back and forth ITERATIONS times through two Events: one sets
an event, the other wakes up, clears it and sets the other. Prints the seconds the
hand-offs took.
"""
import multiprocessing as mp
import sys
import time


def pong(ping, pong, rounds):
    for _ in range(rounds):
        ping.wait()
        ping.clear()
        pong.set()


if __name__ == "__main__":
    rounds = int(sys.argv[1]) // 2
    ctx = mp.get_context("fork")
    ping, back = ctx.Event(), ctx.Event()
    p = ctx.Process(target=pong, args=(ping, back, rounds + 1))
    p.start()
    ping.set()
    back.wait()
    back.clear()
    t = time.perf_counter()
    for _ in range(rounds):
        ping.set()
        back.wait()
        back.clear()
    elapsed = time.perf_counter() - t
    p.join()
    print(elapsed)

"""A Python function that takes 100 ms (I/O-bound: it sleeps without the GIL), for concurrency.escript."""
import time


def work(n):
    time.sleep(0.1)
    return n * n

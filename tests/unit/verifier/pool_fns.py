"""Module-level functions the pool tests send to worker processes (they must be importable)."""

from __future__ import annotations

import os
import threading
import time


def square(x: int) -> int:
    return x * x


def spin_forever_on(x: int, stuck: int) -> int:
    if x == stuck:
        while True:  # a grader stuck in pure Python: only a kill stops it
            pass
    return x


def exit_on(x: int, dying: int) -> int:
    if x == dying:
        os._exit(3)
    return x


def raise_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError("bad item")
    return x


def worker_pid(_: int) -> int:
    return os.getpid()


def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


def read_fifo(path: str) -> str:
    """Block until the test writes to the FIFO at ``path`` (deterministic hold and release)."""
    with open(path) as fifo:
        return fifo.read()


def block_forever(x: int) -> int:
    """Block without using CPU until the pool kills the worker."""
    threading.Event().wait()
    return x

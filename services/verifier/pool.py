"""A supervised process pool for CPU-bound grading with hard per-item timeouts.

Why not ``ProcessPoolExecutor``: it cannot stop one stuck call (its only remedy is to break
the whole pool), and its timeouts count time spent waiting in the queue. Here a supervisor
thread watches every worker: each item's clock starts when a worker reports starting it; a
worker past its item's limit is SIGKILLed and replaced, the item answers ``timeout`` and the
rest of that worker's chunk goes back to the queue. Small items travel in chunks to keep the
per-item overhead low. The API is thread- and event-loop-agnostic (concurrent futures,
wrapped for asyncio), so many requests on any loop can share one pool.

Observability: a worker that dies on its own is logged (WARNING, with its exit code); every
replacement is counted by reason (``rewardhub_verifier_pool_worker_replacements_total``), and
:meth:`GraderPool.queue_depth` is read by the ``rewardhub_verifier_pool_queue_depth`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from services.common.metrics import POOL_WORKER_REPLACEMENTS

log = logging.getLogger("rewardhub.verifier.pool")
OutcomeStatus = Literal["ok", "timeout", "error"]
MAX_CHUNK = 32


@dataclass(frozen=True)
class PoolOutcome:
    status: OutcomeStatus
    value: Any = None
    detail: str = ""
    elapsed_s: float = 0.0


@dataclass
class _Task:
    id: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    timeout_s: float
    deadline: float | None
    future: Future[PoolOutcome]
    started_at: float | None = None


@dataclass
class _Worker:
    process: Any
    conn: Connection
    assigned: deque[_Task] = field(default_factory=deque)


def _worker_main(conn: Connection, preload: Sequence[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which shuts us down
    for module in preload:
        importlib.import_module(module)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for task_id, fn, args in chunk:
            conn.send(("start", task_id))
            try:
                conn.send(("done", task_id, fn(*args)))
            except BaseException as exc:  # report everything, including BaseException timeouts
                conn.send(("raised", task_id, f"{type(exc).__name__}: {exc}"[:500]))


class GraderPool:
    def __init__(self, workers: int, *, preload: Iterable[str] = (), start_method: str = "forkserver") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._ctx = mp.get_context(start_method)
        self._preload = tuple(preload)
        self._size = workers
        self._queue: deque[_Task] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self.replaced_workers = 0
        self._workers = [self._spawn() for _ in range(workers)]
        self._thread = threading.Thread(target=self._supervise, name="grader-pool-supervisor", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------------
    def submit_future(self, fn: Callable[..., Any], args: tuple[Any, ...], *, item_timeout_s: float,
                      deadline: float | None = None) -> Future[PoolOutcome]:
        """Queue one call; ``deadline`` is a ``time.monotonic()`` instant for the whole batch."""
        future: Future[PoolOutcome] = Future()
        task = _Task(next(self._ids), fn, args, item_timeout_s, deadline, future)
        with self._lock:
            if self._closed:
                raise RuntimeError("the grader pool is shut down")
            self._queue.append(task)
        self._wake()
        return future

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], *, item_timeout_s: float,
                     deadline: float | None = None) -> PoolOutcome:
        return await asyncio.wrap_future(self.submit_future(fn, args, item_timeout_s=item_timeout_s,
                                                            deadline=deadline))

    async def map(self, fn: Callable[..., Any], items: Sequence[tuple[Any, ...]], *, item_timeout_s: float,
                  deadline_s: float | None = None) -> list[PoolOutcome]:
        """Run ``fn(*args)`` for every args tuple; results in input order."""
        deadline = time.monotonic() + deadline_s if deadline_s else None
        futures = [self.submit_future(fn, args, item_timeout_s=item_timeout_s, deadline=deadline) for args in items]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    @property
    def size(self) -> int:
        return self._size

    def queue_depth(self) -> int:
        """Items waiting for a worker (not those a worker holds)."""
        with self._lock:
            return len(self._queue)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
        self._wake()
        self._thread.join(timeout=10)
        for task in pending:
            _resolve(task, PoolOutcome("error", detail="the grader pool shut down"))
        for worker in self._workers:
            self._stop(worker, graceful=True)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- supervisor -------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child, self._preload), daemon=True)  # type: ignore[attr-defined]
        process.start()
        child.close()
        return _Worker(process=process, conn=parent)

    def _wake(self) -> None:
        # A full pipe means the supervisor is already due to wake.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                conns = [w.conn for w in self._workers]
            ready = wait([*conns, self._wake_r], timeout=0.02)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 65536)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.conn in ready:
                    self._drain(worker)
            self._enforce_limits(now)
            self._dispatch(now)

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                self._handle(worker, message)
        except (EOFError, OSError):
            self._worker_died(worker)

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind, task_id = message[0], message[1]
        if not worker.assigned or worker.assigned[0].id != task_id:
            return  # a late message from an item already settled (e.g. past its deadline)
        task = worker.assigned[0]
        if kind == "start":
            task.started_at = time.monotonic()
            return
        worker.assigned.popleft()
        elapsed = time.monotonic() - (task.started_at or time.monotonic())
        if kind == "done":
            _resolve(task, PoolOutcome("ok", value=message[2], elapsed_s=elapsed))
        else:
            _resolve(task, PoolOutcome("error", detail=message[2], elapsed_s=elapsed))

    def _enforce_limits(self, now: float) -> None:
        for worker in list(self._workers):
            if not worker.assigned:
                continue
            task = worker.assigned[0]
            if task.started_at is None:
                continue
            over_item = now - task.started_at > task.timeout_s
            over_batch = task.deadline is not None and now > task.deadline
            if over_item or over_batch:
                reason = (f"grading exceeded the per-item limit of {task.timeout_s:g}s" if over_item
                          else "the batch deadline passed while this item was grading")
                worker.assigned.popleft()
                # Replace before resolving so that whoever awaits the outcome sees a whole pool again.
                self._replace(worker, reason="timeout")
                _resolve(task, PoolOutcome("timeout", detail=reason, elapsed_s=now - task.started_at))
        with self._lock:
            expired = [t for t in self._queue if t.deadline is not None and now > t.deadline]
            if expired:
                self._queue = deque(t for t in self._queue if t not in expired)
        for task in expired:
            _resolve(task, PoolOutcome("timeout", detail="the batch deadline passed before this item started"))

    def _dispatch(self, now: float) -> None:
        idle = [w for w in self._workers if not w.assigned]
        if not idle:
            return
        with self._lock:
            backlog = len(self._queue)
            if not backlog:
                return
            # Chunks amortise the pipe round-trip; keep them small enough to spread a batch evenly.
            chunk_size = max(1, min(MAX_CHUNK, backlog // (len(self._workers) * 4)))
            plans = []
            for worker in idle:
                chunk = [self._queue.popleft() for _ in range(min(chunk_size, len(self._queue)))]
                chunk = [t for t in chunk if not t.future.cancelled()]
                if chunk:
                    plans.append((worker, chunk))
                if not self._queue:
                    break
        for worker, chunk in plans:
            worker.assigned.extend(chunk)
            try:
                worker.conn.send([(t.id, t.fn, t.args) for t in chunk])
            except (OSError, ValueError, BrokenPipeError):
                self._worker_died(worker)

    def _worker_died(self, worker: _Worker) -> None:
        worker.process.join(timeout=0.1)
        code = worker.process.exitcode
        log.warning("verifier pool worker %s died (exit code %s) with %d item(s) assigned; replacing it",
                    worker.process.pid, code, len(worker.assigned))
        if worker.assigned:
            task = worker.assigned.popleft()
            if task.started_at is not None:
                _resolve(task, PoolOutcome("error", detail=f"the grading process died (exit code {code})",
                                           elapsed_s=time.monotonic() - task.started_at))
            else:
                worker.assigned.appendleft(task)
        self._replace(worker, reason="died")

    def _replace(self, worker: _Worker, *, reason: Literal["timeout", "died"]) -> None:
        """Kill ``worker``, return its unstarted items to the front of the queue, start a fresh one."""
        self._stop(worker, graceful=False)
        leftovers = list(worker.assigned)
        worker.assigned.clear()
        with self._lock:
            for task in reversed(leftovers):
                task.started_at = None
                self._queue.appendleft(task)
            index = self._workers.index(worker)
            if not self._closed:
                self._workers[index] = self._spawn()
                self.replaced_workers += 1
                POOL_WORKER_REPLACEMENTS.labels(reason).inc()

    @staticmethod
    def _stop(worker: _Worker, *, graceful: bool) -> None:
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
            worker.process.join(timeout=2)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.conn.close()


def _resolve(task: _Task, outcome: PoolOutcome) -> None:
    if not task.future.done():
        task.future.set_result(outcome)

"""The supervised grader pool: per-item hard timeouts, worker replacement, deadlines, order.

Timeouts are tested on a controllable clock: the supervisor's ``time.monotonic`` is a ``FakeClock``
that only the test moves, and the items that must outlast a limit block (on a FIFO, an event or a
spin) until killed or released, so no outcome depends on how fast this machine happens to be.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from pathlib import Path

import pytest

from services.verifier import pool as pool_module
from services.verifier.pool import GraderPool, PoolOutcome
from tests.unit.verifier import pool_fns

PRELOAD = ("tests.unit.verifier.pool_fns",)


@pytest.fixture(scope="module")
def pool() -> Iterator[GraderPool]:
    grader_pool = GraderPool(2, preload=PRELOAD)
    yield grader_pool
    grader_pool.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_results_keep_input_order(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.square, [(i,) for i in range(500)], item_timeout_s=5))
    assert [o.value for o in outcomes] == [i * i for i in range(500)]
    assert {o.status for o in outcomes} == {"ok"}


def test_dead_worker_is_an_error_and_replaced(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.exit_on, [(i, 2) for i in range(6)], item_timeout_s=5))
    assert outcomes[2].status == "error" and "exit code 3" in outcomes[2].detail
    assert [o.value for i, o in enumerate(outcomes) if i != 2] == [0, 1, 3, 4, 5]


def test_exception_is_an_error_with_its_message(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.raise_on, [(i, 1) for i in range(3)], item_timeout_s=5))
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert outcomes[1].detail == "ValueError: bad item"


def test_concurrent_batches_from_several_tasks_and_loops(pool: GraderPool) -> None:
    async def batch(offset: int) -> list[int]:
        outcomes = await pool.map(pool_fns.square, [(offset + i,) for i in range(50)], item_timeout_s=5)
        return [o.value for o in outcomes]

    async def many() -> list[list[int]]:
        return await asyncio.gather(*(batch(k * 100) for k in range(5)))

    results = run(many())
    assert results == [[(k * 100 + i) ** 2 for i in range(50)] for k in range(5)]
    # A second event loop (another request thread) shares the same pool.
    assert run(batch(7))[:2] == [49, 64]


def test_shutdown_leaves_no_live_workers() -> None:
    import os

    small = GraderPool(1)
    pids = small.worker_pids()
    small.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- timeouts on a controllable clock ------------------------------------------------------------


class FakeClock:
    """Stands in for the pool module's ``time``: ``monotonic()`` returns what the test set.

    It counts the reads at the top of one supervisor's loop (which reads the clock, then drains,
    enforces limits and dispatches): a second such read after ``advance_to`` means a whole pass has
    run at the new time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.passes = 0
        self.watched: threading.Thread | None = None
        self._changed = threading.Condition()

    def monotonic(self) -> float:
        with self._changed:
            if threading.current_thread() is self.watched and sys._getframe(1).f_code.co_name == "_supervise":
                self.passes += 1
                self._changed.notify_all()
            return self.now

    def advance_to(self, now: float) -> None:
        """Set the time and return once the watched supervisor has finished a full pass at it."""
        with self._changed:
            self.now = now
            target = self.passes + 2
            assert self._changed.wait_for(lambda: self.passes >= target, timeout=30), "the supervisor stopped"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(pool_module, "time", fake)
    return fake


@pytest.fixture
def clocked_pool(clock: FakeClock) -> Iterator[GraderPool]:
    grader_pool = GraderPool(2, preload=PRELOAD)
    clock.watched = grader_pool._thread
    yield grader_pool
    grader_pool.shutdown()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the test does not control the timing of (a process starting), with a deadline."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def running(pool: GraderPool, future: Future[PoolOutcome]) -> bool:
    """Has a worker started the item behind ``future`` (the supervisor stamped its start)?"""
    with pool._lock:
        workers = list(pool._workers)
    return any(w.assigned and w.assigned[0].future is future and w.assigned[0].started_at is not None
               for w in workers)


def submit_all(pool: GraderPool, fn: Callable[..., object], items: list[tuple[object, ...]], *,
               item_timeout_s: float, deadline: float | None = None) -> list[Future[PoolOutcome]]:
    return [pool.submit_future(fn, args, item_timeout_s=item_timeout_s, deadline=deadline) for args in items]


def test_stuck_item_times_out_alone_and_worker_is_replaced(clock: FakeClock, clocked_pool: GraderPool) -> None:
    before = clocked_pool.replaced_workers
    futures = submit_all(clocked_pool, pool_fns.spin_forever_on, [(i, 3) for i in range(40)], item_timeout_s=0.5)
    stuck = futures[3]
    wait_until(lambda: running(clocked_pool, stuck), "the stuck item to start")
    clock.advance_to(1000.4)  # 0.4 s into a 0.5 s limit: not yet
    assert not stuck.done()
    clock.advance_to(1000.6)  # past it: killed
    outcome = stuck.result(timeout=30)
    assert outcome.status == "timeout" and "per-item limit of 0.5s" in outcome.detail
    assert outcome.elapsed_s == pytest.approx(0.6)
    wait_futures(futures, timeout=60)
    assert [f.result().value for i, f in enumerate(futures) if i != 3] == [i for i in range(40) if i != 3]
    assert {f.result().status for i, f in enumerate(futures) if i != 3} == {"ok"}
    assert clocked_pool.replaced_workers == before + 1
    assert clocked_pool.submit_future(pool_fns.square, (2,), item_timeout_s=5).result(timeout=30).value == 4


def test_timeout_counts_from_execution_start_not_queueing(clock: FakeClock, clocked_pool: GraderPool,
                                                          tmp_path: Path) -> None:
    # Two held items fill both workers (a generous limit); a third with a 5 s limit waits 100 s in the
    # queue. Its limit must count from when a worker starts it, so it still answers ok.
    fifos = [tmp_path / "hold-0", tmp_path / "hold-1"]
    for fifo in fifos:
        os.mkfifo(fifo)
    held = submit_all(clocked_pool, pool_fns.read_fifo, [(str(f),) for f in fifos], item_timeout_s=1000)
    [queued] = submit_all(clocked_pool, pool_fns.square, [(7,)], item_timeout_s=5)
    wait_until(lambda: all(running(clocked_pool, f) for f in held), "both held items to start")
    clock.advance_to(1100.0)
    assert not queued.done() and clocked_pool.queue_depth() == 1
    for fifo in fifos:
        fifo.write_text("go")  # opening a FIFO for writing blocks until its reader (the item) has it open
    assert [f.result(timeout=30).value for f in held] == ["go", "go"]
    outcome = queued.result(timeout=30)
    assert (outcome.status, outcome.value) == ("ok", 49)


def test_batch_deadline_times_out_running_and_queued_items(clock: FakeClock, clocked_pool: GraderPool) -> None:
    # Items 0 and 1 finish at once; 2 and 3 block until killed; 4 waits in the queue behind them.
    deadline = 1010.0
    quick = submit_all(clocked_pool, pool_fns.square, [(2,), (3,)], item_timeout_s=1000, deadline=deadline)
    wait_futures(quick, timeout=30)
    blocked = submit_all(clocked_pool, pool_fns.block_forever, [(0,), (1,)], item_timeout_s=1000, deadline=deadline)
    [waiting] = submit_all(clocked_pool, pool_fns.square, [(4,)], item_timeout_s=1000, deadline=deadline)
    wait_until(lambda: all(running(clocked_pool, f) for f in blocked), "both blocked items to start")
    clock.advance_to(1009.0)  # before the deadline nothing is cut short
    assert not any(f.done() for f in [*blocked, waiting])
    clock.advance_to(1011.0)
    assert [f.result().value for f in quick] == [4, 9]
    for future in blocked:
        outcome = future.result(timeout=30)
        assert (outcome.status, outcome.detail) == ("timeout", "the batch deadline passed while this item was grading")
        assert outcome.elapsed_s == pytest.approx(11.0)
    outcome = waiting.result(timeout=30)
    assert (outcome.status, outcome.detail) == ("timeout", "the batch deadline passed before this item started")


def test_map_sets_the_deadline_from_deadline_s(clock: FakeClock, clocked_pool: GraderPool) -> None:
    async def batch() -> list[PoolOutcome]:
        return await clocked_pool.map(pool_fns.block_forever, [(0,)], item_timeout_s=1000, deadline_s=30)

    outcomes: list[PoolOutcome] = []
    thread = threading.Thread(target=lambda: outcomes.extend(asyncio.run(batch())))
    thread.start()
    wait_until(lambda: clocked_pool.queue_depth() == 0 and any(w.assigned for w in clocked_pool._workers)
               and all(t.started_at is not None for w in clocked_pool._workers for t in w.assigned),
               "the item to start")
    clock.advance_to(1029.0)  # the deadline is 1000 + 30
    assert thread.is_alive()
    clock.advance_to(1031.0)
    thread.join(timeout=30)
    assert [o.status for o in outcomes] == ["timeout"]

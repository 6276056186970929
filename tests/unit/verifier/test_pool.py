"""The supervised grader pool: per-item hard timeouts, worker replacement, deadlines, order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from services.verifier.pool import GraderPool
from tests.unit.verifier import pool_fns


@pytest.fixture(scope="module")
def pool() -> Iterator[GraderPool]:
    grader_pool = GraderPool(2, preload=("tests.unit.verifier.pool_fns",))
    yield grader_pool
    grader_pool.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_results_keep_input_order(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.square, [(i,) for i in range(500)], item_timeout_s=5))
    assert [o.value for o in outcomes] == [i * i for i in range(500)]
    assert {o.status for o in outcomes} == {"ok"}


def test_stuck_item_times_out_alone_and_worker_is_replaced(pool: GraderPool) -> None:
    before = pool.replaced_workers
    started = time.monotonic()
    outcomes = run(pool.map(pool_fns.spin_forever_on, [(i, 3) for i in range(40)], item_timeout_s=0.5))
    elapsed = time.monotonic() - started
    assert outcomes[3].status == "timeout" and "per-item limit" in outcomes[3].detail
    assert [o.value for i, o in enumerate(outcomes) if i != 3] == [i for i in range(40) if i != 3]
    assert pool.replaced_workers == before + 1
    assert elapsed < 10  # bounded by the item limit, not by the stuck item
    assert run(pool.map(pool_fns.square, [(2,)], item_timeout_s=5))[0].value == 4  # still serving


def test_timeout_counts_from_execution_start_not_queueing(pool: GraderPool) -> None:
    # 6 items of 0.3 s on 2 workers wait up to 0.6 s in the queue; a 0.5 s limit must not fire.
    outcomes = run(pool.map(pool_fns.sleep_then, [(0.3,)] * 6, item_timeout_s=0.5))
    assert [o.status for o in outcomes] == ["ok"] * 6


def test_dead_worker_is_an_error_and_replaced(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.exit_on, [(i, 2) for i in range(6)], item_timeout_s=5))
    assert outcomes[2].status == "error" and "exit code 3" in outcomes[2].detail
    assert [o.value for i, o in enumerate(outcomes) if i != 2] == [0, 1, 3, 4, 5]


def test_exception_is_an_error_with_its_message(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.raise_on, [(i, 1) for i in range(3)], item_timeout_s=5))
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert outcomes[1].detail == "ValueError: bad item"


def test_batch_deadline(pool: GraderPool) -> None:
    outcomes = run(pool.map(pool_fns.sleep_then, [(0.4,)] * 10, item_timeout_s=5, deadline_s=0.9))
    statuses = [o.status for o in outcomes]
    assert statuses.count("ok") >= 2 and statuses.count("timeout") >= 4
    assert all("deadline" in o.detail for o in outcomes if o.status == "timeout")


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

"""Batch grading on the supervised process pool: per-item hard timeouts, batch deadlines, streaming."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter

from services.common.reward_api import ItemResult, RewardItem
from services.common.reward_specs import CodeSpec, RewardSpec, RubricSpec
from services.common.settings import get_settings
from services.verifier.pool import GraderPool, PoolOutcome

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)
# Graders whose work is cheap pure-Python string handling run inline: a process hop costs more.
WORKER_IMPORTS = ("math_verify", "services.verifier.graders.registry")


@lru_cache(maxsize=256)
def _spec_from_json(spec_json: str) -> Any:
    return _SPEC_ADAPTER.validate_json(spec_json)


def grade_one(spec_json: str, completion: str, ground_truth: Any) -> dict[str, Any]:
    """Run in a pool worker: grade one item and return a plain dict (cheap to pickle)."""
    from services.verifier.graders.registry import grade

    started = time.perf_counter()
    result = grade(_spec_from_json(spec_json), completion, ground_truth)
    return {"score": result.score, "status": result.status, "sub_scores": dict(result.sub_scores),
            "details": dict(result.details), "elapsed_ms": (time.perf_counter() - started) * 1000}


_POOL: GraderPool | None = None


def get_pool() -> GraderPool:
    """The process-wide grader pool, started on first use (mounted sub-apps get no lifespan events)."""
    global _POOL
    if _POOL is None:
        settings = get_settings()
        _POOL = GraderPool(workers=settings.verifier_workers or os.cpu_count() or 1, preload=WORKER_IMPORTS)
        atexit.register(shutdown_pool)
    return _POOL


def shutdown_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.shutdown()
        _POOL = None


def _item_result(item: RewardItem, outcome: PoolOutcome) -> ItemResult:
    if outcome.status == "ok" and outcome.value is not None:
        value = outcome.value
        status = value["status"]
        return ItemResult(id=item.id, score=value["score"] if status == "ok" else None, status=status,
                          sub_scores=value["sub_scores"], details=value["details"],
                          elapsed_ms=round(value["elapsed_ms"], 3))
    return ItemResult(id=item.id, score=None, status=outcome.status, details={"reason": outcome.detail},
                      elapsed_ms=round(outcome.elapsed_s * 1000, 3))


def _task_args(spec: Any, items: list[RewardItem]) -> list[tuple[Any, ...]]:
    spec_json = json.dumps(spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec, sort_keys=True)
    return [(spec_json, item.completion, item.ground_truth) for item in items]


def _item_timeout(spec: Any) -> float:
    configured = get_settings().verifier_item_timeout_s
    # Code runs carry their own sandbox limits; the pool's hard limit must sit above them.
    if isinstance(spec, CodeSpec):
        return max(configured, spec.timeout_s * 4 + 2.0)
    return configured


async def grade_batch(spec: Any, items: list[RewardItem], deadline_s: float | None,
                      auth: str | None = None) -> list[ItemResult]:
    if isinstance(spec, RubricSpec):  # an LLM judge over HTTP: it waits, so it stays off the process pool
        from services.verifier.graders.rubric import grade_rubric_batch

        return await grade_rubric_batch(spec, items, deadline_s, auth)
    outcomes = await get_pool().map(grade_one, _task_args(spec, items), item_timeout_s=_item_timeout(spec),
                                    deadline_s=deadline_s)
    return [_item_result(item, outcome) for item, outcome in zip(items, outcomes, strict=True)]


async def grade_stream(spec: Any, items: list[RewardItem], deadline_s: float | None,
                       auth: str | None = None) -> AsyncIterator[ItemResult]:
    """Yield each item's result as soon as it is done (completion order, not request order)."""
    if isinstance(spec, RubricSpec):
        from services.verifier.graders.rubric import grade_rubric_stream

        async for result in grade_rubric_stream(spec, items, deadline_s, auth):
            yield result
        return
    pool = get_pool()
    timeout = _item_timeout(spec)
    deadline = time.monotonic() + deadline_s if deadline_s else None

    async def run(item: RewardItem, args: tuple[Any, ...]) -> ItemResult:
        outcome = await pool.submit(grade_one, args, item_timeout_s=timeout, deadline=deadline)
        return _item_result(item, outcome)

    tasks = [asyncio.ensure_future(run(item, args)) for item, args in zip(items, _task_args(spec, items), strict=True)]
    try:
        for finished in asyncio.as_completed(tasks):
            yield await finished
    finally:
        for task in tasks:
            task.cancel()

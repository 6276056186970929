"""Batch grading on the supervised process pool: per-item hard timeouts, batch deadlines, streaming.

Every item graded here is counted by grader type and status (``rewardhub_grader_results_total``) and
its grading time observed (``rewardhub_grader_item_seconds``), whatever path graded it (pool, code
sandbox, rubric judge, multi with remote parts).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import time
from collections.abc import AsyncIterator, Coroutine
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter

from rewardhub.reward_specs import CodeSpec, MathSpec, MultiSpec, RecSpec, RewardSpec, RubricSpec, is_remote
from services.common import metrics
from services.common.cpu import available_cpus
from services.common.reward_api import ItemResult, RewardItem
from services.common.settings import get_settings
from services.verifier.completion_order import as_finished
from services.verifier.graders.result import GradeResult
from services.verifier.pool import GraderPool, PoolOutcome

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)
# math-verify counts its budget in whole seconds, so one second is the least a first try can get.
QUICK_PASS_S = 1.0
# Imported once in each pool worker at start, so the first item of a batch does not pay for them.
WORKER_IMPORTS = ("math_verify", "services.verifier.graders.registry")


@lru_cache(maxsize=256)
def _spec_from_json(spec_json: str) -> Any:
    return _SPEC_ADAPTER.validate_json(spec_json)


def grade_one(spec_json: str, completion: str, ground_truth: Any) -> dict[str, Any]:
    """Run in a pool worker: grade one item and return a plain dict (cheap to pickle)."""
    from services.verifier.graders.registry import grade

    started = time.perf_counter()
    result = grade(_spec_from_json(spec_json), completion, ground_truth)
    return {**_plain(result), "elapsed_ms": (time.perf_counter() - started) * 1000}


def _plain(result: GradeResult) -> dict[str, Any]:
    """A grade as plain data, cheap to pickle back from a worker."""
    return {"score": result.score, "status": result.status, "sub_scores": dict(result.sub_scores),
            "details": dict(result.details)}


def grade_components(spec_json: str, completion: str, ground_truth: Any) -> dict[str, Any]:
    """Run in a pool worker: every part of a multi spec graded on the pool (not its rubric or code parts)."""
    from services.verifier.graders.multi import ground_truth_for
    from services.verifier.graders.registry import grade

    started = time.perf_counter()
    parts = {}
    for name, sub in _spec_from_json(spec_json).graders.items():
        if is_remote(sub):
            continue
        parts[name] = _plain(grade(sub, completion, ground_truth_for(name, ground_truth)))
    return {"parts": parts, "elapsed_ms": (time.perf_counter() - started) * 1000}


_POOL: GraderPool | None = None


def get_pool() -> GraderPool:
    """The process-wide grader pool, started on first use (mounted sub-apps get no lifespan events)."""
    global _POOL
    if _POOL is None:
        settings = get_settings()
        _POOL = GraderPool(workers=settings.verifier_workers or available_cpus(), preload=WORKER_IMPORTS)
        atexit.register(shutdown_pool)
    return _POOL


def _pool_queue_depth() -> float:
    return float(_POOL.queue_depth()) if _POOL is not None else 0.0


metrics.POOL_QUEUE_DEPTH.set_function(_pool_queue_depth)


def grader_type(spec: Any) -> str:
    """The spec's ``type`` (a fixed set of grader names: a bounded metric label)."""
    kind = getattr(spec, "type", None)
    return kind if isinstance(kind, str) else "unknown"


def observe(spec: Any, result: ItemResult) -> ItemResult:
    """Count one item's result in the grader metrics; returns it unchanged."""
    metrics.observe_grade(grader_type(spec), result.status, result.elapsed_ms / 1000)
    return result


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
    return get_settings().verifier_item_timeout_s


def _quick_pass(spec: Any) -> Any | None:
    """The cheaper spec every item is tried with first, or None.

    An adversarial completion (an exponent tower, deep nesting) can use a math spec's whole budget;
    with many of them the rest of the batch would wait behind them. Every item is tried with
    ``QUICK_PASS_S`` first; one that runs out goes to the back of the queue with the full budget,
    so the batch's ordinary items are all graded before any straggler gets its second try.
    """
    if isinstance(spec, MathSpec) and spec.timeout_s > QUICK_PASS_S:
        return spec.model_copy(update={"timeout_s": QUICK_PASS_S})
    if isinstance(spec, MultiSpec):  # its math parts, the same way
        quick_parts = {name: _quick_pass(part) for name, part in spec.graders.items()}
        if any(part is not None for part in quick_parts.values()):
            return spec.model_copy(update={"graders": {name: quick_parts[name] or part
                                                       for name, part in spec.graders.items()}})
    return None


def _ran_out(outcome: PoolOutcome, spec: Any, quick: Any) -> bool:
    """A shortened math budget ran out (a hard kill or the batch deadline is final).

    For a multi, only when one of its shortened parts is among the undecided ones: a code part
    that used its own full budget is not tried again.
    """
    if outcome.status != "ok" or outcome.value is None or outcome.value["status"] != "timeout":
        return False
    if not isinstance(spec, MultiSpec):
        return True
    shortened = {name for name, part in quick.graders.items() if part is not spec.graders[name]}
    return bool(shortened & set(outcome.value["details"].get("undecided", [])))


def _pool_gradings(spec: Any, items: list[RewardItem], deadline_s: float | None) -> list[Coroutine[Any, Any, ItemResult]]:
    """One coroutine per item, queued on the pool in item order as soon as they are scheduled."""
    pool, timeout = get_pool(), _item_timeout(spec)
    deadline = time.monotonic() + deadline_s if deadline_s else None
    quick = _quick_pass(spec)
    full_args = _task_args(spec, items)
    first_args = _task_args(quick, items) if quick is not None else full_args

    async def grade(item: RewardItem, first: tuple[Any, ...], full: tuple[Any, ...]) -> ItemResult:
        outcome = await pool.submit(grade_one, first, item_timeout_s=timeout, deadline=deadline)
        if quick is None or not _ran_out(outcome, spec, quick):
            return _item_result(item, outcome)
        spent_ms = outcome.value["elapsed_ms"] if outcome.value else 0.0
        result = _item_result(item, await pool.submit(grade_one, full, item_timeout_s=timeout, deadline=deadline))
        return result.model_copy(update={
            "elapsed_ms": round(result.elapsed_ms + spent_ms, 3),
            "details": {**result.details, "first_try": f"ran out of {QUICK_PASS_S:g}s; graded again with "
                                                      "the full budget after the rest of the batch"}})

    return [grade(item, first, full) for item, first, full in zip(items, first_args, full_args, strict=True)]


async def grade_batch(spec: Any, items: list[RewardItem], deadline_s: float | None,
                      auth: str | None = None) -> list[ItemResult]:
    return [observe(spec, result) for result in await _grade_batch(spec, items, deadline_s, auth)]


async def grade_stream(spec: Any, items: list[RewardItem], deadline_s: float | None,
                       auth: str | None = None) -> AsyncIterator[ItemResult]:
    """Yield each item's result as soon as it is done (completion order, not request order)."""
    async for result in _grade_stream(spec, items, deadline_s, auth):
        yield observe(spec, result)


async def _grade_batch(spec: Any, items: list[RewardItem], deadline_s: float | None,
                       auth: str | None) -> list[ItemResult]:
    if isinstance(spec, RubricSpec):  # an LLM judge over HTTP: it waits, so it stays off the process pool
        from services.verifier.graders.rubric import grade_rubric_batch

        return await grade_rubric_batch(spec, items, deadline_s, auth)
    if isinstance(spec, CodeSpec):  # the sandbox service runs the code; here we only wait for it
        from services.verifier.graders.code import grade_code_batch

        return await grade_code_batch(spec, items, deadline_s)
    if isinstance(spec, RecSpec):  # RecRM's hybrid reward, scored by the rec_rm service
        from services.verifier.graders.rec import grade_rec_batch

        return await grade_rec_batch(spec, items, deadline_s, auth)
    if isinstance(spec, MultiSpec) and spec.has_remote_parts():
        return await _grade_multi_with_remote_parts(spec, items, deadline_s, auth)
    return list(await asyncio.gather(*_pool_gradings(spec, items, deadline_s)))


async def _grade_stream(spec: Any, items: list[RewardItem], deadline_s: float | None,
                        auth: str | None) -> AsyncIterator[ItemResult]:
    if isinstance(spec, RubricSpec):
        from services.verifier.graders.rubric import grade_rubric_stream

        async for result in grade_rubric_stream(spec, items, deadline_s, auth):
            yield result
        return
    if isinstance(spec, CodeSpec):
        from services.verifier.graders.code import grade_code_stream

        async for result in grade_code_stream(spec, items, deadline_s):
            yield result
        return
    if isinstance(spec, RecSpec):  # rec_rm scores the batch in one call (or a few): answered together
        from services.verifier.graders.rec import grade_rec_batch

        for result in await grade_rec_batch(spec, items, deadline_s, auth):
            yield result
        return
    if isinstance(spec, MultiSpec) and spec.has_remote_parts():
        # Each item waits for its slowest part anyway; the batch finishes with its slowest remote part.
        for result in await _grade_multi_with_remote_parts(spec, items, deadline_s, auth):
            yield result
        return
    async for finished in as_finished(_pool_gradings(spec, items, deadline_s)):
        yield finished


async def _grade_multi_with_remote_parts(spec: MultiSpec, items: list[RewardItem], deadline_s: float | None,
                                         auth: str | None) -> list[ItemResult]:
    """A multi spec with rubric or code parts: the other parts on the pool, each remote part over HTTP,
    side by side, then the weighted sum and gates over all of them (the same rule as a pure multi)."""
    from services.verifier.graders.multi import combine

    remote = {name: sub for name, sub in spec.graders.items() if is_remote(sub)}

    async def local() -> list[PoolOutcome] | None:
        if len(remote) == len(spec.graders):
            return None
        return await get_pool().map(grade_components, _task_args(spec, items), item_timeout_s=_item_timeout(spec),
                                    deadline_s=deadline_s)

    local_task = asyncio.ensure_future(local())
    remote_parts = await asyncio.gather(*(_remote_part(name, sub, items, deadline_s, auth)
                                          for name, sub in remote.items()))
    local_outcomes = await local_task
    results = []
    for index, item in enumerate(items):
        parts: dict[str, GradeResult] = {}
        elapsed_ms = 0.0
        if local_outcomes is not None:
            outcome = local_outcomes[index]
            if outcome.status != "ok" or outcome.value is None:  # the pool killed or lost the item
                results.append(_item_result(item, outcome))
                continue
            parts.update({name: GradeResult(**part) for name, part in outcome.value["parts"].items()})
            elapsed_ms = outcome.value["elapsed_ms"]
        for name, graded in zip(remote, remote_parts, strict=True):
            part, part_ms = graded[index]
            parts[name] = part
            elapsed_ms = max(elapsed_ms, part_ms)
        combined = combine(spec, {name: parts[name] for name in spec.graders})
        results.append(ItemResult(id=item.id, score=combined.score if combined.status == "ok" else None,
                                  status=combined.status, sub_scores=combined.sub_scores, details=combined.details,
                                  elapsed_ms=round(elapsed_ms, 3)))
    return results


async def _remote_part(name: str, sub: Any, items: list[RewardItem], deadline_s: float | None,
                       auth: str | None) -> list[tuple[GradeResult, float]]:
    """One remote part of a multi for every item: (grade, elapsed ms), in item order."""
    from services.verifier.graders.code import grade_code_batch
    from services.verifier.graders.multi import ground_truth_for
    from services.verifier.graders.rubric import grade_rubric_batch

    routed = [item.model_copy(update={"ground_truth": ground_truth_for(name, item.ground_truth)}) for item in items]
    if isinstance(sub, CodeSpec):
        graded = await grade_code_batch(sub, routed, deadline_s)
    elif isinstance(sub, RecSpec):
        from services.verifier.graders.rec import grade_rec_batch

        graded = await grade_rec_batch(sub, routed, deadline_s, auth)
    else:
        graded = await grade_rubric_batch(sub, routed, deadline_s, auth)
    return [(GradeResult(score=r.score or 0.0, status=r.status,
                         details={**r.details, "sub_scores": r.sub_scores}), r.elapsed_ms) for r in graded]

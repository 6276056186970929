"""Rubric jobs: large judge or generate batches run by a Celery worker, with progress in the database.

The route validates every item up front (a bad item is a 4xx naming ``items[i].field``), stores
the batch, and submits :func:`services.rubric_rm.tasks.run_rubric_job`. The worker processes the
items with bounded concurrency and writes ``done`` as it goes (about every 1% of the batch),
so ``GET /v1/jobs/{id}`` shows progress from any process. A failing item is a result with its
status and cause; only a fault of the job itself fails the job.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Future
from typing import Any

from pydantic import BaseModel, ValidationError

from services.common.auth import Principal
from services.common.db import session_scope, utcnow
from services.common.errors import ApiError, InvalidInput, NotFound
from services.common.llm.client import OpenAIChatClient
from services.common.llm.types import ChatBackend
from services.common.models import Role
from services.rubric_rm import operations
from services.rubric_rm.backends import fresh_backend
from services.rubric_rm.models import JobState, RubricJob
from services.rubric_rm.schemas import (
    GenerateRubricRequest,
    JobKind,
    JobOut,
    JobRequest,
    PairwiseJudgeRequest,
    PointwiseJudgeRequest,
)

ITEM_MODELS: dict[str, type[BaseModel]] = {
    "judge_pairwise": PairwiseJudgeRequest, "judge_pointwise": PointwiseJudgeRequest,
    "generate": GenerateRubricRequest,
}
# Futures of jobs run in-process (embedded default), so tests and the CLI can wait on them.
LOCAL_FUTURES: dict[str, Future[Any]] = {}


def _field(index: int, loc: tuple[Any, ...]) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    return f"items[{index}]{path}"


def validate_items(kind: JobKind, items: list[dict[str, Any]], project_id: str) -> list[dict[str, Any]]:
    """Each item validated as the body of the matching single route, acting in the job's project."""
    model = ITEM_MODELS[kind]
    out: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if item.get("project_id") not in (None, project_id):
            raise InvalidInput("an item cannot name a project other than the job's", field=f"items[{index}].project_id")
        try:
            parsed = model.model_validate({**item, "project_id": project_id})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidInput(f"{_field(index, tuple(first['loc']))}: {first['msg']}",
                               field=_field(index, tuple(first["loc"]))) from exc
        out.append(parsed.model_dump(mode="json", exclude_none=True))
    return out


def create_job(principal: Principal, body: JobRequest, project_id: str) -> RubricJob:
    items = validate_items(body.kind, body.items, project_id)
    # The worker acts with the creating key's project scope (it has no request of its own).
    scope = {"all_projects": principal.all_projects, "project_ids": sorted(principal.project_ids)}
    with session_scope() as session:
        job = RubricJob(project_id=project_id, kind=body.kind, total=len(items),
                        payload={"items": items, "max_concurrency": body.max_concurrency, "scope": scope})
        session.add(job)
        session.flush()
        session.expunge(job)
        return job


def job_out(job: RubricJob) -> JobOut:
    finished = job.state is JobState.succeeded
    return JobOut(id=job.id, project_id=job.project_id, kind=job.kind, state=job.state.value, total=job.total,
                  done=job.done, progress=job.done / job.total if job.total else 1.0, summary=job.summary,
                  results=job.results if finished else None, error=job.error, created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at)


def get_job(principal: Principal, job_id: str) -> JobOut:
    with session_scope() as session:
        job = session.get(RubricJob, job_id)
        if job is None or not principal.can_access(job.project_id):
            raise NotFound(f"job {job_id!r} not found", field="job_id")
        return job_out(job)


def summarise_results(kind: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status; ``parse_rate`` = ok / n (an unparseable or failed item is not parsed);
    ``mean_score`` over ok pointwise items; ``agreement_rate`` of both orders over ok pairwise items."""
    n = len(results)
    by_status = Counter(str(r.get("status")) for r in results)
    ok = [r for r in results if r.get("status") == "ok"]
    summary: dict[str, Any] = {"n": n, "by_status": dict(by_status), "parse_rate": len(ok) / n if n else None}
    if kind == "judge_pointwise":
        scores = [r["score"] for r in ok if r.get("score") is not None]
        summary["mean_score"] = sum(scores) / len(scores) if scores else None
    if kind == "judge_pairwise":
        agreed = [r["agreement"] for r in ok if r.get("agreement") is not None]
        summary["agreement_rate"] = sum(agreed) / len(agreed) if agreed else None
    return summary


async def run_item(kind: str, item: dict[str, Any], principal: Principal, backend: ChatBackend) -> dict[str, Any]:
    """One item through the same code as its single route; a request-level problem is its result."""
    try:
        if kind == "judge_pairwise":
            pair = await operations.judge_pair(principal, PairwiseJudgeRequest.model_validate(item), backend)
            return pair.model_dump(mode="json")
        if kind == "judge_pointwise":
            point = await operations.judge_point(principal, PointwiseJudgeRequest.model_validate(item), backend)
            return point.model_dump(mode="json")
        body = GenerateRubricRequest.model_validate(item)
        generated = await operations.generate_cached(item["project_id"], body, backend)
        return generated.model_dump(mode="json")
    except ApiError as exc:
        return {"status": "invalid_input", "error": exc.message, "field": exc.field}


def _update(job_id: str, **values: Any) -> None:
    with session_scope() as session:
        job = session.get(RubricJob, job_id)
        if job is not None:
            for name, value in values.items():
                setattr(job, name, value)


def _load(job_id: str) -> RubricJob:
    with session_scope() as session:
        job = session.get(RubricJob, job_id)
        if job is None:
            raise LookupError(f"rubric job {job_id} does not exist")
        session.expunge(job)
        return job


async def run_job(job_id: str, backend: ChatBackend | None = None) -> dict[str, Any]:
    """Process every item of job ``job_id``; returns the summary (also stored on the job)."""
    job = await asyncio.to_thread(_load, job_id)
    await asyncio.to_thread(_update, job_id, state=JobState.running, started_at=utcnow(), done=0)
    scope = job.payload["scope"]
    principal = Principal(key_id=f"job:{job_id}", role=Role.trainer, all_projects=scope["all_projects"],
                          project_ids=frozenset(scope["project_ids"]))
    items: list[dict[str, Any]] = job.payload["items"]
    own_backend = backend is None
    llm = backend if backend is not None else fresh_backend()
    limit = asyncio.Semaphore(int(job.payload.get("max_concurrency", 8)))
    step = max(1, len(items) // 100)
    done = 0
    written = 0

    async def one(item: dict[str, Any]) -> dict[str, Any]:
        nonlocal done, written
        async with limit:
            result = await run_item(job.kind, item, principal, llm)
        done += 1
        if done - written >= step and done < len(items):
            written = done
            await asyncio.to_thread(_update, job_id, done=done)
        return result

    try:
        results = list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        if own_backend and isinstance(llm, OpenAIChatClient):
            await llm.aclose()
    summary = summarise_results(job.kind, results)
    await asyncio.to_thread(_update, job_id, state=JobState.succeeded, done=len(items), results=results,
                            summary=summary, finished_at=utcnow())
    return summary


def fail_job(job_id: str, error: str) -> None:
    _update(job_id, state=JobState.failed, error=error[:5000], finished_at=utcnow())


def wait_local(job_id: str, timeout_s: float | None = None) -> None:
    """Block until an in-process job has finished (no-op for jobs sent to a broker)."""
    future = LOCAL_FUTURES.get(job_id)
    if future is not None:
        future.result(timeout=timeout_s)

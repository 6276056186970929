"""Rubric jobs: large judge or generate batches run by a Celery worker, with progress in the database.

The route validates every item up front (a bad item is a 4xx naming ``items[i].field``), stores
the batch, and submits :func:`services.rubric_rm.tasks.run_rubric_job`. The worker processes the
items with bounded concurrency and counts ``done`` as it goes, so ``GET /v1/jobs/{id}`` shows
progress from any process. A failing item is a result with its status and cause; only a fault of
the job itself fails the job.

Durability (a job resumes, it does not restart):

* **Outbox.** The row is committed ``pending_submit`` (shown as ``queued``) with the request's
  idempotency record, in one transaction; the API submits it after the commit. If the broker is
  down the API withdraws the row and its idempotency record and answers 503 with ``Retry-After``:
  nothing was accepted, and a retry with the same ``Idempotency-Key`` creates the job once. If the
  API dies between commit and submit, the sweeper submits the row.
* **Lease.** A delivery claims the job (compare-and-set on ``owner``) and stamps ``heartbeat_at``
  every ``job_heartbeat_s``. A delivery of a finished job, or of one leased by a live attempt, is a
  no-op, so a redelivery (visibility timeout, lost ack, sweeper resubmission) never runs it twice.
* **Checkpoints.** Each finished item is committed to ``rubric_job_items`` as it finishes; a rerun
  judges only the items not stored yet. Only items that were in flight when a worker died run again.
* **Sweeper** (:func:`sweep`, run by every worker at start-up and every ``job_sweep_interval_s``):
  resubmits ``pending_submit``/``queued`` rows not submitted for ``job_resubmit_after_s`` and
  requeues ``running`` rows whose heartbeat is older than ``job_stale_after_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from collections import Counter
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from services.common import idempotency
from services.common.auth import Principal
from services.common.db import session_scope, utcnow
from services.common.errors import ApiError, InvalidInput, NotFound
from services.common.llm.client import OpenAIChatClient
from services.common.llm.types import ChatBackend
from services.common.models import Role
from services.common.pagination import Page, keyset_page
from services.common.settings import get_settings
from services.rubric_rm import operations
from services.rubric_rm.backends import fresh_backend
from services.rubric_rm.models import JobState, RubricJob, RubricJobItem
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
IDEMPOTENCY_ENDPOINT = "rubric_rm.jobs"
TERMINAL = (JobState.succeeded, JobState.failed)
# Database faults that are the infrastructure's, not the job's: the job is left to be requeued.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
log = logging.getLogger("rewardhub.rubric_rm.jobs")


class LeaseLost(Exception):
    """Another attempt took the job over (this one's heartbeat went stale); stop without failing it."""


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


def create_job(principal: Principal, body: JobRequest, project_id: str,
               idempotency_key: str | None = None) -> RubricJob | idempotency.Stored:
    """Commit the job ``pending_submit`` (with the key's answer, in the same transaction), or return
    the stored answer of an earlier request with ``idempotency_key``."""
    items = validate_items(body.kind, body.items, project_id)
    # The worker acts with the creating key's project scope (it has no request of its own).
    scope = {"all_projects": principal.all_projects, "project_ids": sorted(principal.project_ids)}
    request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    with session_scope() as session:
        if idempotency_key is not None:
            stored = idempotency.replay(session, project_id, IDEMPOTENCY_ENDPOINT, idempotency_key, request_hash)
            if stored is not None:
                return stored
        job = RubricJob(project_id=project_id, kind=body.kind, total=len(items), state=JobState.pending_submit,
                        payload={"items": items, "max_concurrency": body.max_concurrency, "scope": scope})
        session.add(job)
        session.flush()
        if idempotency_key is not None:
            idempotency.remember(session, project_id, IDEMPOTENCY_ENDPOINT, idempotency_key, request_hash, 202,
                                 job_out(job).model_dump_json())
        session.expunge(job)
        return job


def mark_submitted(job_id: str) -> None:
    """After a successful submission: ``queued``, submitted now (unless a worker already claimed it)."""
    with session_scope() as session:
        session.execute(update(RubricJob)
                        .where(RubricJob.id == job_id, RubricJob.state.in_([JobState.pending_submit, JobState.queued]))
                        .values(state=JobState.queued, submitted_at=utcnow())
                        .execution_options(synchronize_session=False))


def withdraw_job(job_id: str, project_id: str, idempotency_key: str | None) -> bool:
    """The broker refused the job: delete it (still ``pending_submit``) and its key's answer, together.
    False when it is already past ``pending_submit`` (the submission got through after all)."""
    with session_scope() as session:
        gone = session.execute(delete(RubricJob).where(RubricJob.id == job_id, RubricJob.state == JobState.pending_submit)
                               .execution_options(synchronize_session=False))
        if getattr(gone, "rowcount", 0) != 1:
            return False
        if idempotency_key is not None:
            record = idempotency.IdempotencyRecord
            session.execute(delete(record).where(record.project_id == project_id,
                                                 record.endpoint == IDEMPOTENCY_ENDPOINT,
                                                 record.key == idempotency_key)
                            .execution_options(synchronize_session=False))
        return True


def job_out(job: RubricJob, *, with_results: bool = True) -> JobOut:
    finished = job.state is JobState.succeeded and with_results
    # pending_submit is an internal step of "queued": accepted and committed, being handed to the broker.
    state = JobState.queued if job.state is JobState.pending_submit else job.state
    return JobOut(id=job.id, project_id=job.project_id, kind=job.kind, state=state.value, total=job.total,
                  done=job.done, progress=job.done / job.total if job.total else 1.0, summary=job.summary,
                  results=job.results if finished else None, error=job.error, created_at=job.created_at,
                  started_at=job.started_at, finished_at=job.finished_at)


def get_job(principal: Principal, job_id: str) -> JobOut:
    with session_scope() as session:
        job = session.get(RubricJob, job_id)
        if job is None or not principal.can_access(job.project_id):
            raise NotFound(f"job {job_id!r} not found", field="job_id")
        return job_out(job)


def list_jobs(session: Session, project_ids: set[str] | None, cursor: str | None, limit: int) -> Page[JobOut]:
    """One page of the jobs in ``project_ids`` (None: every project), oldest first, without their results
    (a job's results can be large: ``GET /v1/jobs/{id}`` has them)."""
    query = select(RubricJob)
    if project_ids is not None:
        query = query.where(RubricJob.project_id.in_(project_ids))
    rows, next_cursor = keyset_page(session, query, (RubricJob.created_at, RubricJob.id), cursor, limit)
    return Page(data=[job_out(job, with_results=False) for job in rows], next_cursor=next_cursor)


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


def _stale_after_s() -> float:
    s = get_settings()
    return s.job_stale_after_s if s.job_stale_after_s is not None else 6.0 * s.job_heartbeat_s


def _host_tag() -> str:
    return hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


def attempt_owner() -> str:
    """A new attempt's owner tag, ``<pid hex>-<host hash>-<random>`` (32 chars at most, the column's width).

    Pid and host let a redelivery on the same host see at once that the attempt holding the job died
    (a killed prefork child) instead of waiting for its heartbeat to go stale.
    """
    return f"{os.getpid():x}-{_host_tag()}-{uuid.uuid4().hex}"[:32]


def _holder_died_here(owner: str | None) -> bool:
    """True when ``owner`` is an attempt of this host whose process no longer exists."""
    parts = (owner or "").split("-")
    if len(parts) != 3 or parts[1] != _host_tag():
        return False
    try:
        pid = int(parts[0], 16)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _claim(job_id: str, owner: str) -> tuple[RubricJob, dict[int, dict[str, Any]]] | None:
    """Take the job for attempt ``owner``, with the items stored so far; None when this delivery must
    not run it (gone, finished, or leased by an attempt whose heartbeat is fresh)."""
    now = utcnow()
    with session_scope() as session:
        job = session.get(RubricJob, job_id, with_for_update=True)
        if job is None:
            log.warning("rubric job %s does not exist (withdrawn?); delivery ignored", job_id)
            return None
        if job.state in TERMINAL:
            log.info("rubric job %s is %s already; redelivery ignored", job_id, job.state.value)
            return None
        if (job.state is JobState.running and job.owner not in (None, owner) and job.heartbeat_at is not None
                and job.heartbeat_at > now - timedelta(seconds=_stale_after_s())):
            if not _holder_died_here(job.owner):
                log.info("rubric job %s runs elsewhere (attempt %s); duplicate delivery ignored", job_id, job.owner)
                return None
            log.warning("rubric job %s: its attempt %s died on this host; taking it over", job_id, job.owner)
        stored = {row.item_index: row.result for row in session.scalars(
            select(RubricJobItem).where(RubricJobItem.job_id == job_id))}
        job.state, job.owner, job.heartbeat_at = JobState.running, owner, now
        job.attempts = (job.attempts or 0) + 1
        job.started_at = job.started_at or now
        job.done = len(stored)
        session.flush()
        session.expunge(job)
        return job, stored


def _beat(job_id: str, owner: str) -> bool:
    with session_scope() as session:
        result = session.execute(update(RubricJob)
                                 .where(RubricJob.id == job_id, RubricJob.owner == owner,
                                        RubricJob.state == JobState.running)
                                 .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
        return getattr(result, "rowcount", 0) == 1


def _store_item(job_id: str, owner: str, index: int, result: dict[str, Any]) -> None:
    """Checkpoint one finished item (and count it), in one transaction."""
    try:
        with session_scope() as session:
            session.add(RubricJobItem(job_id=job_id, item_index=index, result=result))
            session.flush()
            session.execute(update(RubricJob).where(RubricJob.id == job_id, RubricJob.owner == owner)
                            .values(done=RubricJob.done + 1).execution_options(synchronize_session=False))
    except IntegrityError:
        log.info("rubric job %s item %d was stored by another attempt", job_id, index)


def _finish(job_id: str, owner: str, kind: str, total: int) -> dict[str, Any]:
    """All items stored: assemble results in item order, mark the job succeeded, drop the checkpoints."""
    with session_scope() as session:
        rows = list(session.scalars(select(RubricJobItem).where(RubricJobItem.job_id == job_id)
                                    .order_by(RubricJobItem.item_index)))
        if [row.item_index for row in rows] != list(range(total)):
            raise LeaseLost(f"rubric job {job_id}: {total - len(rows)} items are not stored")
        results = [row.result for row in rows]
        summary = summarise_results(kind, results)
        result = session.execute(update(RubricJob).where(RubricJob.id == job_id, RubricJob.owner == owner,
                                                         RubricJob.state == JobState.running)
                                 .values(state=JobState.succeeded, done=total, results=results, summary=summary,
                                         finished_at=utcnow(), owner=None, heartbeat_at=None)
                                 .execution_options(synchronize_session=False))
        if getattr(result, "rowcount", 0) != 1:
            raise LeaseLost(f"rubric job {job_id} was taken over before it finished")
        session.execute(delete(RubricJobItem).where(RubricJobItem.job_id == job_id)
                        .execution_options(synchronize_session=False))
        return summary


async def run_job(job_id: str, backend: ChatBackend | None = None) -> dict[str, Any]:
    """Process the items of job ``job_id`` not stored yet; returns the summary (also stored on the job).

    A delivery that must not run the job (see :func:`_claim`) returns ``{"skipped": reason}``.
    """
    owner = attempt_owner()
    claimed = await asyncio.to_thread(_claim, job_id, owner)
    if claimed is None:
        return {"skipped": "finished, gone, or running elsewhere"}
    job, stored = claimed
    try:
        return await _run_claimed(job, owner, stored, backend)
    except LeaseLost:
        raise
    except TRANSIENT_DB_ERRORS:
        raise  # the database, not the job: its heartbeat goes stale and the sweeper requeues it
    except Exception as exc:
        await asyncio.to_thread(fail_job, job_id, f"{type(exc).__name__}: {exc}", owner)
        raise


async def _run_claimed(job: RubricJob, owner: str, stored: dict[int, dict[str, Any]],
                       backend: ChatBackend | None) -> dict[str, Any]:
    job_id = job.id
    scope = job.payload["scope"]
    principal = Principal(key_id=f"job:{job_id}", role=Role.trainer, all_projects=scope["all_projects"],
                          project_ids=frozenset(scope["project_ids"]))
    items: list[dict[str, Any]] = job.payload["items"]
    todo = [index for index in range(len(items)) if index not in stored]
    if stored:
        log.info("rubric job %s resumes (attempt %d): %d of %d items stored, %d to run", job_id, job.attempts,
                 len(stored), len(items), len(todo))
    own_backend = backend is None
    llm = backend if backend is not None else fresh_backend()
    limit = asyncio.Semaphore(int(job.payload.get("max_concurrency", 8)))
    lost = asyncio.Event()

    async def heartbeat() -> None:
        interval = get_settings().job_heartbeat_s
        while True:
            await asyncio.sleep(interval)
            try:
                alive = await asyncio.to_thread(_beat, job_id, owner)
            except TRANSIENT_DB_ERRORS as exc:  # keep trying; the lease may go stale meanwhile
                log.warning("rubric job %s heartbeat failed: %s", job_id, exc)
                continue
            if not alive:
                lost.set()
                return

    async def one(index: int) -> None:
        # The slot is held until the judgment is stored: a judgment counts as in flight until then, so a
        # worker that dies re-runs at most max_concurrency of them (the answered, unstored ones included).
        async with limit:
            if lost.is_set():
                return
            result = await run_item(job.kind, items[index], principal, llm)
            await asyncio.to_thread(_store_item, job_id, owner, index, result)

    beating = asyncio.create_task(heartbeat())
    try:
        await asyncio.gather(*(one(index) for index in todo))
    finally:
        beating.cancel()
        if own_backend and isinstance(llm, OpenAIChatClient):
            await llm.aclose()
    if lost.is_set():
        raise LeaseLost(f"rubric job {job_id} was taken over by another attempt")
    return await asyncio.to_thread(_finish, job_id, owner, job.kind, len(items))


def fail_job(job_id: str, error: str, owner: str | None = None) -> None:
    """Mark the job failed with ``error`` (only the attempt holding it, when ``owner`` is given)."""
    with session_scope() as session:
        condition = [RubricJob.id == job_id, RubricJob.state.not_in(TERMINAL)]
        if owner is not None:
            condition.append(RubricJob.owner == owner)
        session.execute(update(RubricJob).where(*condition)
                        .values(state=JobState.failed, error=error[:5000], finished_at=utcnow(), owner=None)
                        .execution_options(synchronize_session=False))


def sweep(submit: Any, now: datetime | None = None, limit: int = 500) -> dict[str, int]:
    """Resubmit jobs whose submission or delivery was lost, and requeue jobs whose worker died.

    ``submit(job_id)`` hands one job to the broker (raising when it is down: the round stops and
    the next one retries). Returns counts: ``resubmitted`` and ``requeued``.
    """
    s = get_settings()
    now = now or utcnow()
    resubmit_before = now - timedelta(seconds=s.job_resubmit_after_s)
    stale_before = now - timedelta(seconds=_stale_after_s())
    last_submitted = func.coalesce(RubricJob.submitted_at, RubricJob.created_at)
    last_beat = func.coalesce(RubricJob.heartbeat_at, RubricJob.started_at, RubricJob.created_at)
    with session_scope() as session:
        rows = session.execute(select(RubricJob.id, RubricJob.state, RubricJob.heartbeat_at).where(or_(
            and_(RubricJob.state.in_([JobState.pending_submit, JobState.queued]), last_submitted < resubmit_before),
            and_(RubricJob.state == JobState.running, last_beat < stale_before),
        )).order_by(RubricJob.created_at).limit(limit)).all()
    counts = {"resubmitted": 0, "requeued": 0}
    for job_id, state, heartbeat_at in rows:
        if state is JobState.running:
            with session_scope() as session:
                taken = session.execute(
                    update(RubricJob).where(RubricJob.id == job_id, RubricJob.state == JobState.running,
                                            RubricJob.heartbeat_at.is_(None) if heartbeat_at is None
                                            else RubricJob.heartbeat_at == heartbeat_at)
                    .values(state=JobState.queued, owner=None).execution_options(synchronize_session=False))
            if getattr(taken, "rowcount", 0) != 1:
                continue  # it beat again, or another sweeper took it
            log.warning("rubric job %s: heartbeat older than %.0f s, requeued", job_id, _stale_after_s())
            counts["requeued"] += 1
        else:
            counts["resubmitted"] += 1
            log.warning("rubric job %s: %s and not submitted for %.0f s, resubmitted", job_id, state.value,
                        s.job_resubmit_after_s)
        submit(job_id)
        mark_submitted(job_id)
    return counts


def wait_local(job_id: str, timeout_s: float | None = None) -> None:
    """Block until an in-process job has finished (no-op for jobs sent to a broker)."""
    future = LOCAL_FUTURES.get(job_id)
    if future is not None:
        future.result(timeout=timeout_s)

"""Jobs: large judge or generate batches run on a worker, with progress."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from services.common import idempotency
from services.common.auth import TrainerOrAdmin
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.tasks import BrokerUnavailable
from services.common.validation import IdempotencyKeyHeader, JobIdPath
from services.rubric_rm import jobs, operations, tasks
from services.rubric_rm.deps import ListedProjects, SessionDep
from services.rubric_rm.schemas import JobOut, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["rubric_rm"])


@router.post("", response_model=JobOut, status_code=202,
             responses={503: {"description": "The task broker is unreachable; nothing was created. Retry after "
                                             "`Retry-After` seconds with the same Idempotency-Key."}})
async def create_job(body: JobRequest, principal: TrainerOrAdmin,
                     idempotency_key: IdempotencyKeyHeader = None) -> JobOut | Response:
    """Run a large judge or generate batch on a worker; poll `GET /v1/jobs/{id}` for progress and results.

    The job is committed before it is queued; if the broker is down the job is withdrawn and the answer
    is 503 with `Retry-After` (error field `broker`). A job whose submission is lost otherwise (the
    service died in between) is submitted by the workers' sweeper.
    """
    project_id = await operations.resolve_project(principal, body.project_id)
    created = await asyncio.to_thread(jobs.create_job, principal, body, project_id, idempotency_key)
    if isinstance(created, idempotency.Stored):
        return idempotency.replayed_response(created)
    try:
        await asyncio.to_thread(tasks.submit_job, created.id)
    except BrokerUnavailable:
        if await asyncio.to_thread(jobs.withdraw_job, created.id, project_id, idempotency_key):
            raise
    return jobs.job_out(created)


@router.get("", response_model=Page[JobOut])
def list_jobs(projects: ListedProjects, session: SessionDep, cursor: CursorParam = None,
              limit: LimitParam = DEFAULT_LIMIT) -> Page[JobOut]:
    """The jobs of the key's projects, or of `project_id`, oldest first; `results` only on `GET /v1/jobs/{id}`."""
    return jobs.list_jobs(session, projects, cursor, limit)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: JobIdPath, principal: TrainerOrAdmin) -> JobOut:
    return await asyncio.to_thread(jobs.get_job, principal, job_id)

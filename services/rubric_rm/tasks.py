"""The Celery task that runs a rubric job (a worker needs ``services.rubric_rm.tasks`` in its imports)."""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Task

from services.common.tasks import celery_app, submit
from services.rubric_rm import jobs


@celery_app.task(name="rubric_rm.run_job", bind=True)  # type: ignore[untyped-decorator]
def run_rubric_job(self: Task, job_id: str) -> dict[str, Any]:
    """Run job ``job_id`` to the end; any fault of the job itself marks it failed with the cause."""
    try:
        return asyncio.run(jobs.run_job(job_id))
    except Exception as exc:
        jobs.fail_job(job_id, f"{type(exc).__name__}: {exc}")
        raise


def submit_job(job_id: str) -> str:
    """Queue the job (or start it on a local thread in the embedded default); returns the task id."""
    handle = submit(run_rubric_job, job_id)
    if handle.future is not None:
        jobs.LOCAL_FUTURES[job_id] = handle.future
    return handle.id

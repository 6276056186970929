"""The Celery task that runs a rubric job (a worker needs ``services.rubric_rm.tasks`` in its imports).

Every delivery of a job is safe to run: a finished job, or one leased by a live attempt, is a
no-op, and a resumed job judges only the items not checkpointed yet (services/rubric_rm/jobs.py).
The jobs sweeper is registered here, so every worker runs it (services/common/tasks.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Task

from services.common.tasks import celery_app, register_sweeper, submit
from services.rubric_rm import jobs


@celery_app.task(name="rubric_rm.run_job", bind=True)  # type: ignore[untyped-decorator]
def run_rubric_job(self: Task, job_id: str) -> dict[str, Any]:
    """Run job ``job_id`` to the end; a fault of the job itself marks it failed with the cause
    (``jobs.run_job`` does that); an attempt that lost its lease to another one just stops."""
    try:
        return asyncio.run(jobs.run_job(job_id))
    except jobs.LeaseLost as exc:
        return {"skipped": str(exc)}


def _send(job_id: str) -> str:
    handle = submit(run_rubric_job, job_id)
    if handle.future is not None:
        jobs.LOCAL_FUTURES[job_id] = handle.future
    return handle.id


def submit_job(job_id: str) -> str:
    """Queue the job (or start it on a local thread in the embedded default) and mark it ``queued``;
    returns the task id. Raises ``BrokerUnavailable`` when the broker is down (the row stays
    ``pending_submit``)."""
    task_id = _send(job_id)
    jobs.mark_submitted(job_id)
    return task_id


def sweep_jobs() -> dict[str, int]:
    """One round of the jobs sweeper (resubmit lost submissions, requeue jobs of dead workers)."""
    return jobs.sweep(_send)


register_sweeper("rubric_rm.jobs", sweep_jobs)

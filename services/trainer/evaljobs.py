"""Evaluation jobs: create, list, cancel, resume; supervised by the training runs' machinery.

An evaluation job is a row of ``evaluation_jobs`` with the lease columns of a training run, and
:data:`EVAL_JOBS` is its :class:`~services.trainer.runs.JobKind`: the same launcher (one worker
process per attempt, ``python -m services.trainer.eval_worker``, its minted key on stdin), the same
reaping and dead-attempt rules (failed, or requeued when ``REWARDHUB_TRAINER_RESUME_DEAD_RUNS`` is
on), the same watchers (services/trainer/supervisor.py sweeps every registered kind) and the same
cancel. A resumed attempt continues from the per-item results in the job's folder
(``<project area>/evaluations/<job id>/``; services/trainer/eval_kinds.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import Project
from services.common.pagination import keyset_page
from services.common.settings import Settings
from services.common.tasks import register_sweeper
from services.trainer import confine, datasets, eval_kinds, runs
from services.trainer.models import EvaluationJob

EVALUATIONS = "evaluations"


def job_dir(project_id: str, job_id: str, settings: Settings | None = None) -> Path:
    """Where a job's per-item results and report go: chosen by the service, never by the caller."""
    return confine.project_area(project_id, settings) / EVALUATIONS / job_id


def registered_for(session: Session, project_id: str, kind: str, config: dict[str, Any]) -> dict[str, str]:
    """The project's dataset names a config may use (``model`` jobs name a dataset)."""
    if kind != "model":
        return {}
    return datasets.registered_files(session, project_id, str(config.get("dataset", "")))


def checked_config(session: Session, project_id: str, kind: str, raw: Any) -> tuple[dict[str, Any], int]:
    """The config as stored after every check, and the job's item count."""
    config = eval_kinds.parse_config(kind, raw)
    stored = config.model_dump(mode="json")
    registered = registered_for(session, project_id, kind, stored)
    eval_kinds.check(kind, config, project_id, registered)
    return stored, eval_kinds.count_items(kind, config, project_id, registered)


def check_resumable(session: Session, job: Any) -> None:
    """Raise (a 4xx) unless ``job`` may be queued again under today's rules."""
    checked_config(session, job.project_id, job.kind, job.config)
    if job.output_dir != str(job_dir(job.project_id, job.id)):
        raise Conflict(f"output_dir: evaluation {job.id} writes outside its project's area and cannot be resumed",
                       field="output_dir")


EVAL_JOBS = runs.register_job_kind(runs.JobKind(EvaluationJob, "services.trainer.eval_worker", "evaluation",
                                                "/v1/evaluations/{id}/resume", check_resumable))


def create_job(session: Session, project: Project, name: str, kind: str,
               raw: Any) -> tuple[EvaluationJob, runs.Launch]:
    """Record a checked job, claimed by this process as its first attempt, with the key minted for it."""
    stored, total = checked_config(session, project.id, kind, raw)
    job = EvaluationJob(project_id=project.id, name=name, kind=kind, config=stored, output_dir="", attempt=1,
                        total_items=total, supervisor=runs.this_process(), heartbeat_at=utcnow())
    session.add(job)
    session.flush()
    job.output_dir = str(job_dir(project.id, job.id))
    return job, runs.Launch(job.id, job.attempt, job.output_dir, runs.mint_key(session, job, project), EVAL_JOBS)


def get_job(session: Session, job_id: str, project_ids: set[str] | None) -> EvaluationJob:
    job = session.get(EvaluationJob, job_id)
    if job is None or (project_ids is not None and job.project_id not in project_ids):
        raise NotFound(f"no evaluation job {job_id}", field="evaluation_id")
    if job.status.finished:
        runs.revoke_key(session, job)
    return job


def list_jobs(session: Session, project_ids: set[str] | None, cursor: str | None,
              limit: int) -> tuple[list[EvaluationJob], str | None]:
    """One page of the jobs in ``project_ids`` (None: every project), oldest first, and the next cursor."""
    query = select(EvaluationJob)
    if project_ids is not None:
        query = query.where(EvaluationJob.project_id.in_(project_ids))
    return keyset_page(session, query, (EvaluationJob.created_at, EvaluationJob.id), cursor, limit)


def request_cancel(session: Session, job: EvaluationJob) -> None:
    """Ask the job's worker to stop between items (a queued job ends at once)."""
    if job.status.finished:
        raise Conflict(f"evaluation {job.id} has already {job.status.value}", field="evaluation_id")
    runs.request_cancel(session, job)


def prepare_resume(session: Session, job: EvaluationJob) -> runs.Launch:
    return runs.prepare_resume(session, job, EVAL_JOBS)


def samples_path(job: EvaluationJob) -> Path:
    """The job's per-sample JSONL (what an attempt appends to and a resumed one reads)."""
    return Path(job.output_dir) / eval_kinds.SAMPLES_FILE[job.kind]


def sweep() -> dict[str, int]:
    """The Celery workers' sweeper for evaluation jobs (see services/trainer/supervisor.py)."""
    from services.trainer import supervisor

    return supervisor.sweep(kind=EVAL_JOBS)


register_sweeper("trainer.evaluations", sweep)

"""Evaluation job routes: start, list, watch (progress), cancel, resume, and read the results."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import FileResponse

from services.common import idempotency
from services.common.auth import TrainerOrAdmin, choose_project, get_accessible_project
from services.common.errors import Conflict, NotFound
from services.common.idempotency import replayed_response
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import ID_PATTERN, IdempotencyKeyHeader
from services.trainer import evaljobs, runs
from services.trainer.deps import RunScope, SessionDep
from services.trainer.eval_schemas import EvaluationCreate, EvaluationOut, EvaluationResults

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])
EVALUATIONS_ENDPOINT = "trainer/evaluations"
EvaluationIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An evaluation job id (32 hex characters).")]


@router.post("", response_model=EvaluationOut, status_code=201)
def start_evaluation(body: EvaluationCreate, principal: TrainerOrAdmin, session: SessionDep,
                     idempotency_key: IdempotencyKeyHeader = None) -> EvaluationOut | Response:
    """Check and confine the config, record the job with a key minted for it, start its worker process."""
    project = get_accessible_project(session, principal, choose_project(principal, body.project_id))
    request_hash = idempotency.fingerprint(body.model_dump(mode="json") | {"project_id": project.id})
    if idempotency_key is not None:
        stored = idempotency.replay(session, project.id, EVALUATIONS_ENDPOINT, idempotency_key, request_hash)
        if stored is not None:
            return replayed_response(stored)
    job, ticket = evaljobs.create_job(session, project, body.name, body.kind, body.config)
    out = EvaluationOut.from_job(job)
    if idempotency_key is not None:
        idempotency.remember(session, project.id, EVALUATIONS_ENDPOINT, idempotency_key, request_hash, 201,
                             out.model_dump_json())
    session.commit()
    runs.launch(ticket)
    return out


@router.get("", response_model=Page[EvaluationOut])
def list_evaluations(scope: RunScope, session: SessionDep, cursor: CursorParam = None,
                     limit: LimitParam = DEFAULT_LIMIT) -> Page[EvaluationOut]:
    """The evaluation jobs of the key's projects, oldest first."""
    rows, next_cursor = evaljobs.list_jobs(session, scope, cursor, limit)
    return Page(data=[EvaluationOut.from_job(job) for job in rows], next_cursor=next_cursor)


@router.get("/{evaluation_id}", response_model=EvaluationOut)
def get_evaluation(evaluation_id: EvaluationIdPath, scope: RunScope, session: SessionDep) -> EvaluationOut:
    """Status and progress (stage, done/total items, items resumed), and the report once it has succeeded."""
    return EvaluationOut.from_job(evaljobs.get_job(session, evaluation_id, scope))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationOut, status_code=202)
def cancel_evaluation(evaluation_id: EvaluationIdPath, scope: RunScope, session: SessionDep) -> EvaluationOut:
    """Ask the job to stop after the items in flight; what is finished stays for a resume."""
    job = evaljobs.get_job(session, evaluation_id, scope)
    evaljobs.request_cancel(session, job)
    return EvaluationOut.from_job(job)


@router.post("/{evaluation_id}/resume", response_model=EvaluationOut, status_code=202)
def resume_evaluation(evaluation_id: EvaluationIdPath, scope: RunScope, session: SessionDep) -> EvaluationOut:
    """Continue a cancelled or failed job in a new worker process; finished items are not redone."""
    job = evaljobs.get_job(session, evaluation_id, scope)
    ticket = evaljobs.prepare_resume(session, job)
    session.commit()
    runs.launch(ticket)
    return EvaluationOut.from_job(job)


@router.get("/{evaluation_id}/results", response_model=EvaluationResults)
def get_results(evaluation_id: EvaluationIdPath, scope: RunScope, session: SessionDep) -> EvaluationResults:
    """The report (metrics JSON) of a job that has succeeded, and where its per-sample JSONL is."""
    job = evaljobs.get_job(session, evaluation_id, scope)
    if job.metrics is None:
        raise Conflict(f"evaluation {job.id} is {job.status.value}; results come once it has succeeded",
                       field="evaluation_id")
    return EvaluationResults(id=job.id, kind=job.kind, status=job.status.value, metrics=job.metrics,
                             samples_url=f"/v1/evaluations/{job.id}/samples")


@router.get("/{evaluation_id}/samples", response_class=FileResponse,
            responses={200: {"content": {"application/jsonl": {}}}})
def get_samples(evaluation_id: EvaluationIdPath, scope: RunScope, session: SessionDep) -> FileResponse:
    """The per-sample JSONL as it stands (also while the job runs): one line per finished item."""
    job = evaljobs.get_job(session, evaluation_id, scope)
    path = evaljobs.samples_path(job)
    if not path.is_file():
        raise NotFound(f"evaluation {job.id} has no finished items yet", field="evaluation_id")
    return FileResponse(path, media_type="application/jsonl", filename=f"evaluation-{job.id}-{path.name}")

"""Run routes: start, list, watch, cancel and resume GRPO-family training runs."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.common import idempotency
from services.common.auth import TrainerOrAdmin, choose_project, get_accessible_project
from services.common.idempotency import replayed_response
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import IdempotencyKeyHeader, RunIdPath
from services.trainer import runs
from services.trainer.deps import AfterStepQuery, RunScope, SessionDep
from services.trainer.schemas import RunCreate, RunOut, StepMetricsOut

router = APIRouter(prefix="/v1/runs", tags=["runs"])
RUNS_ENDPOINT = "trainer/runs"
AFTER_STEP_WARNING = '299 - "the query parameter after_step is deprecated; page with cursor (next_cursor)"'


@router.post("", response_model=RunOut, status_code=201)
def start_run(body: RunCreate, principal: TrainerOrAdmin, session: SessionDep,
              idempotency_key: IdempotencyKeyHeader = None) -> RunOut | Response:
    """Validate and confine the config, record the run with a key minted for it, start its worker process."""
    project = get_accessible_project(session, principal, choose_project(principal, body.project_id))
    request_hash = idempotency.fingerprint(body.model_dump(mode="json") | {"project_id": project.id})
    if idempotency_key is not None:
        # Claimed in this transaction: it commits with the run, so a retry never starts a second one.
        stored = idempotency.replay(session, project.id, RUNS_ENDPOINT, idempotency_key, request_hash)
        if stored is not None:
            return replayed_response(stored)
    run, ticket = runs.create_run(session, project, body.name, body.config)
    out = RunOut.from_run(run)
    if idempotency_key is not None:
        idempotency.remember(session, project.id, RUNS_ENDPOINT, idempotency_key, request_hash, 201,
                             out.model_dump_json())
    session.commit()  # the run exists before its worker starts (the worker reads it from the database)
    runs.launch(ticket)
    return out


@router.get("", response_model=Page[RunOut])
def list_runs(scope: RunScope, session: SessionDep, cursor: CursorParam = None,
              limit: LimitParam = DEFAULT_LIMIT) -> Page[RunOut]:
    """The runs of the key's projects, oldest first."""
    rows, next_cursor = runs.list_runs(session, scope, cursor, limit)
    return Page(data=[RunOut.from_run(run) for run in rows], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunIdPath, scope: RunScope, session: SessionDep) -> RunOut:
    """Status, step and the latest metrics (reward mean/std, non-ok share, loss, KL, clip fraction…)."""
    return RunOut.from_run(runs.get_run(session, run_id, scope))


@router.get("/{run_id}/metrics", response_model=Page[StepMetricsOut])
def get_metrics(run_id: RunIdPath, scope: RunScope, session: SessionDep, response: Response,
                cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT,
                after_step: AfterStepQuery = None) -> Page[StepMetricsOut]:
    """The run's per-step metrics by step, a page at a time."""
    runs.get_run(session, run_id, scope)
    if after_step is not None:
        response.headers["Deprecation"] = "true"
        response.headers["Warning"] = AFTER_STEP_WARNING
    rows, next_cursor = runs.step_metrics(session, run_id, after_step or 0, cursor, limit)
    return Page(data=[StepMetricsOut.from_row(row) for row in rows], next_cursor=next_cursor)


@router.post("/{run_id}/cancel", response_model=RunOut, status_code=202)
def cancel_run(run_id: RunIdPath, scope: RunScope, session: SessionDep) -> RunOut:
    """Ask the run to stop; it saves a checkpoint at the end of the current step, then ends `cancelled`."""
    run = runs.get_run(session, run_id, scope)
    runs.request_cancel(session, run)
    return RunOut.from_run(run)


@router.post("/{run_id}/resume", response_model=RunOut, status_code=202)
def resume_run(run_id: RunIdPath, scope: RunScope, session: SessionDep) -> RunOut:
    """Continue a cancelled or failed run from its last checkpoint, in a new worker process."""
    run = runs.get_run(session, run_id, scope)
    ticket = runs.prepare_resume(session, run)
    session.commit()
    runs.launch(ticket)
    return RunOut.from_run(run)

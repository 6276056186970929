"""Behaviour models: train one on the project's logs (a Celery job with progress), list, read metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import delete

from services.common import idempotency
from services.common.db import session_scope
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.tasks import BrokerUnavailable
from services.common.validation import IdempotencyKeyHeader, JobIdPath
from services.rec_rm import tasks, training
from services.rec_rm.deps import ProjectPath, SessionDep
from services.rec_rm.models import BehaviourModel
from services.rec_rm.schemas import BehaviourModelOut, TrainRequest

router = APIRouter(prefix="/v1/projects/{project_id}/behaviour-models", tags=["rec_rm"])


def _create(project_id: str, body: TrainRequest, key: str | None) -> BehaviourModelOut | idempotency.Stored:
    request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    with session_scope() as session:
        if key is not None:
            stored = idempotency.replay(session, project_id, training.IDEMPOTENCY_ENDPOINT, key, request_hash)
            if stored is not None:
                return stored
        row = training.create_model(session, project_id, body)
        training.remember(session, project_id, key, request_hash, row)
        return training.model_out(row)


def _withdraw(model_id: str, project_id: str, key: str | None) -> None:
    with session_scope() as session:
        session.execute(delete(BehaviourModel).where(BehaviourModel.id == model_id)
                        .execution_options(synchronize_session=False))
        if key is not None:
            record = idempotency.IdempotencyRecord
            session.execute(delete(record).where(record.project_id == project_id,
                                                 record.endpoint == training.IDEMPOTENCY_ENDPOINT, record.key == key)
                            .execution_options(synchronize_session=False))


@router.post("", response_model=BehaviourModelOut, status_code=202)
async def train_model(project_id: ProjectPath, body: TrainRequest,
                      idempotency_key: IdempotencyKeyHeader = None) -> BehaviourModelOut | Response:
    """Train the next behaviour-model version on the project's logs; poll `GET .../{id}` for progress.

    Metrics (AUC and log-loss on a held-out time split, the popularity baseline's AUC) come with the
    finished model. A broker that is down is a 503 with `Retry-After` and nothing created.
    """
    out = await asyncio.to_thread(_create, project_id, body, idempotency_key)
    if isinstance(out, idempotency.Stored):
        return idempotency.replayed_response(out)
    try:
        await asyncio.to_thread(tasks.submit_training, out.id)
    except BrokerUnavailable:
        await asyncio.to_thread(_withdraw, out.id, project_id, idempotency_key)
        raise
    return out


@router.get("", response_model=Page[BehaviourModelOut])
def list_models(project_id: ProjectPath, session: SessionDep, cursor: CursorParam = None,
                limit: LimitParam = DEFAULT_LIMIT) -> Page[BehaviourModelOut]:
    return training.list_models(session, project_id, cursor, limit)


@router.get("/{model_id}", response_model=BehaviourModelOut)
def get_model(project_id: ProjectPath, model_id: JobIdPath, session: SessionDep) -> BehaviourModelOut:
    return training.model_out(training.get_model(session, project_id, model_id))

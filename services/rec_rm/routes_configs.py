"""The project's hybrid reward configuration: weights, gates and scorer options, versioned."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from services.common import idempotency
from services.common.validation import IdempotencyKeyHeader
from services.rec_rm import operations, store
from services.rec_rm.config import RecConfig
from services.rec_rm.deps import ProjectPath, SessionDep
from services.rec_rm.schemas import RewardConfigOut

router = APIRouter(prefix="/v1/projects/{project_id}/reward-config", tags=["rec_rm"])


@router.post("", response_model=RewardConfigOut, status_code=201)
async def put_config(project_id: ProjectPath, body: RecConfig,
                     idempotency_key: IdempotencyKeyHeader = None) -> RewardConfigOut | Response:
    """Store a new version of the configuration; it is in force for every later score."""
    out = await asyncio.to_thread(operations.put_config, project_id, body, idempotency_key)
    if isinstance(out, idempotency.Stored):
        return idempotency.replayed_response(out)
    return out


@router.get("", response_model=RewardConfigOut)
def get_config(project_id: ProjectPath, session: SessionDep) -> RewardConfigOut:
    """The configuration in force (the defaults, version null, until one is stored)."""
    return store.latest_config(session, project_id)

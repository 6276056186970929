"""Interaction logs: import events `{user_id, item_id, event, timestamp, context}` and list them."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from services.common import idempotency
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import IdempotencyKeyHeader
from services.rec_rm import operations, store
from services.rec_rm.deps import ProjectPath, SessionDep
from services.rec_rm.items import detect_format
from services.rec_rm.schemas import InteractionImportOut, InteractionOut

router = APIRouter(prefix="/v1/projects/{project_id}/interactions", tags=["rec_rm"])


@router.post("", response_model=InteractionImportOut, status_code=201)
async def import_interactions(project_id: ProjectPath, file: Annotated[UploadFile, File(description="The events.")],
                              format: Annotated[str | None, Form()] = None,
                              idempotency_key: IdempotencyKeyHeader = None) -> InteractionImportOut | Response:
    """Append logged events (JSONL, CSV or Parquet); each import is all or nothing."""
    fmt = detect_format(file.filename, format)
    data = await file.read()
    out = await asyncio.to_thread(operations.import_interactions, project_id, fmt, data, idempotency_key)
    if isinstance(out, idempotency.Stored):
        return idempotency.replayed_response(out)
    return out


@router.get("", response_model=Page[InteractionOut])
def list_interactions(project_id: ProjectPath, session: SessionDep,
                      user_id: Annotated[str | None, Query(max_length=200)] = None, cursor: CursorParam = None,
                      limit: LimitParam = DEFAULT_LIMIT) -> Page[InteractionOut]:
    """The project's events in time order (of one user with `user_id`)."""
    return store.list_interactions(session, project_id, user_id, cursor, limit)

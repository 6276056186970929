"""Item catalogs: import (a new version each time), list versions, read a version's items."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile
from fastapi.responses import Response

from services.common import idempotency
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import IdempotencyKeyHeader
from services.rec_rm import operations, store
from services.rec_rm.deps import ProjectPath, SessionDep
from services.rec_rm.items import detect_format
from services.rec_rm.schemas import CatalogVersionOut, ItemOut

router = APIRouter(prefix="/v1/projects/{project_id}/catalogs", tags=["rec_rm"])
VersionPath = Annotated[int, Path(ge=1, description="A catalog version (1, 2, ...).")]
FormatForm = Annotated[str | None, Form(description="jsonl, csv or parquet; unset: from the file name.")]


@router.post("", response_model=CatalogVersionOut, status_code=201)
async def import_catalog(project_id: ProjectPath, file: Annotated[UploadFile, File(description="The items.")],
                         format: FormatForm = None,
                         idempotency_key: IdempotencyKeyHeader = None) -> CatalogVersionOut | Response:
    """Import items `{item_id, title, attributes{}}` as the project's next catalog version."""
    fmt = detect_format(file.filename, format)
    data = await file.read()
    out = await asyncio.to_thread(operations.import_catalog, project_id, fmt, data, idempotency_key)
    if isinstance(out, idempotency.Stored):
        return idempotency.replayed_response(out)
    return out


@router.get("", response_model=Page[CatalogVersionOut])
def list_catalogs(project_id: ProjectPath, session: SessionDep, cursor: CursorParam = None,
                  limit: LimitParam = DEFAULT_LIMIT) -> Page[CatalogVersionOut]:
    """The project's catalog versions, oldest first."""
    return store.list_catalogs(session, project_id, cursor, limit)


@router.get("/{version}", response_model=CatalogVersionOut)
def get_catalog(project_id: ProjectPath, version: VersionPath, session: SessionDep) -> CatalogVersionOut:
    return store.catalog_out(store.get_catalog(session, project_id, version))


@router.get("/{version}/items", response_model=Page[ItemOut])
def list_items(project_id: ProjectPath, version: VersionPath, session: SessionDep, cursor: CursorParam = None,
               limit: LimitParam = DEFAULT_LIMIT) -> Page[ItemOut]:
    """A catalog version's items, by item_id."""
    return store.list_items(session, store.get_catalog(session, project_id, version), cursor, limit)


@router.get("/{version}/items/{item_id}", response_model=ItemOut)
def get_item(project_id: ProjectPath, version: VersionPath, item_id: str, session: SessionDep) -> ItemOut:
    return store.get_item(session, store.get_catalog(session, project_id, version), item_id)

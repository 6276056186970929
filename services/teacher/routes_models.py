"""Teacher models: the per-project registry (local folders and EMA copies) and weight pushes."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from services.common import idempotency
from services.common.auth import TrainerOrAdmin
from services.common.errors import InvalidInput
from services.common.pagination import (
    DEFAULT_LIMIT,
    CursorParam,
    LimitParam,
    Page,
    decode_cursor,
    encode_cursor,
)
from services.common.validation import IdempotencyKeyHeader, ProjectIdQuery
from services.teacher import registry, weights
from services.teacher.model_cache import CACHE
from services.teacher.operations import model_out, project_for
from services.teacher.registry import NAME_PATTERN
from services.teacher.schemas import TeacherModelIn, TeacherModelOut, WeightsPushOut

router = APIRouter(prefix="/v1/teacher-models", tags=["teacher"])

NamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="The teacher model's name in its project.")]
TauQuery = Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False, description=(
    "EMA step: ψ ← (1 − τ)ψ + τθ with θ the upload; omitted: the upload replaces the weights."))]


@router.put("/{name}", response_model=TeacherModelOut)
def register_model(name: NamePath, body: TeacherModelIn, principal: TrainerOrAdmin, response: Response,
                   project_id: ProjectIdQuery = None) -> TeacherModelOut:
    """Register a model folder (under teacher_models_dir) as a teacher; the same body again changes nothing,
    another one replaces the registration (and drops pushed weights). 201 when it is new or replaced."""
    project = project_for(principal, project_id)
    record, changed = registry.register(project, name, body.kind, body.path, body.dtype)
    if changed:
        CACHE.forget(project, name)
        response.status_code = 201
    return model_out(record)


@router.get("", response_model=Page[TeacherModelOut])
def list_models(principal: TrainerOrAdmin, project_id: ProjectIdQuery = None, cursor: CursorParam = None,
                limit: LimitParam = DEFAULT_LIMIT) -> Page[TeacherModelOut]:
    """The teacher models of the key's projects (or of `project_id`), by project and name."""
    if project_id is not None:
        projects: set[str] | None = {project_for(principal, project_id)}
    else:
        projects = None if principal.all_projects else set(principal.project_ids)
    records = registry.list_records(projects)
    if cursor:
        after = tuple(str(v) for v in decode_cursor(cursor, 2))
        records = [r for r in records if (r.project_id, r.name) > after]
    page = records[:limit]
    next_cursor = encode_cursor([page[-1].project_id, page[-1].name]) if len(records) > limit else None
    return Page(data=[model_out(r) for r in page], next_cursor=next_cursor)


@router.get("/{name}", response_model=TeacherModelOut)
def get_model(name: NamePath, principal: TrainerOrAdmin, project_id: ProjectIdQuery = None) -> TeacherModelOut:
    return model_out(registry.read(project_for(principal, project_id), name, field="name"))


@router.delete("/{name}", status_code=204)
def delete_model(name: NamePath, principal: TrainerOrAdmin, project_id: ProjectIdQuery = None) -> Response:
    project = project_for(principal, project_id)
    registry.delete(project, name)
    CACHE.forget(project, name)
    return Response(status_code=204)


def _push(project: str, name: str, body: bytes, tau: float | None) -> WeightsPushOut:
    record = registry.read(project, name, field="name")
    if record.kind != "ema":
        raise InvalidInput(f"name: {name!r} is a local teacher model; only an ema model takes weights", field="name")
    state = weights.parse_state_dict(body)
    result = weights.push_weights(record, state, tau)
    return WeightsPushOut(model=model_out(result.record), tensors=result.tensors, elements=result.elements,
                          mode="replace" if tau is None else "ema", tau=tau)


@router.put("/{name}/weights", response_model=WeightsPushOut, openapi_extra={
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                         "format": "binary"}}}}})
async def push_weights(name: NamePath, request: Request, principal: TrainerOrAdmin, project_id: ProjectIdQuery = None,
                       tau: TauQuery = None, idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Push a safetensors state dict into an ema teacher: replaced, or mixed with `tau`. An EMA step is not
    idempotent by itself: send `Idempotency-Key` (e.g. the training step) so a retry is not applied twice."""
    project = await asyncio.to_thread(project_for, principal, project_id)
    body = await request.body()
    held: idempotency.Claim | None = None
    if idempotency_key is not None:
        digest = hashlib.sha256(body + f"|tau={tau!r}".encode()).hexdigest()
        claimed = await asyncio.to_thread(idempotency.claim, project, f"teacher.weights:{name}", idempotency_key,
                                          digest, lease_s=idempotency.lease_seconds(300.0))
        if isinstance(claimed, idempotency.Stored):
            return idempotency.replayed_response(claimed)
        held = claimed
    try:
        out = await asyncio.to_thread(_push, project, name, body, tau)
    except BaseException:
        if held is not None:
            await asyncio.to_thread(idempotency.release, held)
        raise
    text = out.model_dump_json()
    if held is not None:
        await asyncio.to_thread(idempotency.complete, held, 200, text)
    return Response(text, media_type="application/json")

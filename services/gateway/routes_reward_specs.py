"""Stored, versioned reward specs of a project (`name@version`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.common import idempotency
from services.common.auth import CurrentPrincipal, TrainerOrAdmin, get_accessible_project
from services.common.idempotency import replayed_response
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import IdempotencyKeyHeader, ProjectIdPath
from services.gateway import reward_specs_store
from services.gateway.deps import SessionDep, SpecRefPath
from services.gateway.schemas import RewardSpecCreate, RewardSpecOut

router = APIRouter(prefix="/v1/projects/{project_id}/reward-specs", tags=["rewards"])


@router.post("", response_model=RewardSpecOut, status_code=201)
def create_reward_spec(project_id: ProjectIdPath, body: RewardSpecCreate, principal: TrainerOrAdmin,
                       session: SessionDep, idempotency_key: IdempotencyKeyHeader = None) -> RewardSpecOut | Response:
    """Add a version of a named spec (the first POST of a name is version 1)."""
    get_accessible_project(session, principal, project_id)
    created = reward_specs_store.create_version(session, project_id, body, idempotency_key)
    if isinstance(created, idempotency.Stored):
        return replayed_response(created)
    return created


@router.get("", response_model=Page[RewardSpecOut])
def list_reward_specs(project_id: ProjectIdPath, principal: CurrentPrincipal, session: SessionDep,
                      cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[RewardSpecOut]:
    """The latest version of each spec, by name."""
    get_accessible_project(session, principal, project_id)
    return reward_specs_store.list_latest(session, project_id, cursor, limit)


@router.get("/{ref}", response_model=RewardSpecOut)
def get_reward_spec(project_id: ProjectIdPath, ref: SpecRefPath, principal: CurrentPrincipal,
                    session: SessionDep) -> RewardSpecOut:
    get_accessible_project(session, principal, project_id)
    return reward_specs_store.spec_out(reward_specs_store.resolve(session, project_id, ref, field="ref"))

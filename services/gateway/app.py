"""Gateway routes: tenancy (projects, API keys) and the public reward API."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from sqlalchemy.orm import Session

from services.common.app_factory import create_service_app
from services.common.auth import (
    Principal,
    current_principal,
    get_accessible_project,
    limit_reward_token,
    principal_for_key,
    require_roles,
)
from services.common.db import get_session
from services.common.errors import Forbidden
from services.common.models import Role
from services.common.settings import get_settings
from services.common.validation import ID_PATTERN, KeyIdPath, ProjectIdPath
from services.gateway import openrlhf, reward_specs_store, rewards, tenancy
from services.gateway.schemas import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    Me,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    ProjectCreate,
    ProjectOut,
    RewardSpecCreate,
    RewardSpecOut,
    RewardsRequest,
    RewardsResponse,
)

router = APIRouter(prefix="/v1", tags=["tenancy"])
admin_only = require_roles(Role.admin)


@router.get("/me", response_model=Me)
def me(principal: Principal = Depends(current_principal)) -> Me:
    return Me(key_id=principal.key_id, role=principal.role, all_projects=principal.all_projects,
              project_ids=sorted(principal.project_ids))


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectCreate, principal: Principal = Depends(admin_only),
                   session: Session = Depends(get_session)) -> ProjectOut:
    project = tenancy.create_project(session, principal, body.name, body.description)
    return ProjectOut.model_validate(project)


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(principal: Principal = Depends(current_principal),
                  session: Session = Depends(get_session)) -> list[ProjectOut]:
    return [ProjectOut.model_validate(p) for p in tenancy.list_projects(session, principal)]


@router.get("/projects/{project_id}", response_model=ProjectOut)
def get_project(project_id: ProjectIdPath, principal: Principal = Depends(current_principal),
                session: Session = Depends(get_session)) -> ProjectOut:
    return ProjectOut.model_validate(get_accessible_project(session, principal, project_id))


@router.post("/projects/{project_id}/keys", response_model=KeyCreated, status_code=201)
def create_key(project_id: ProjectIdPath, body: KeyCreate, principal: Principal = Depends(admin_only),
               session: Session = Depends(get_session)) -> KeyCreated:
    return tenancy.issue_project_key(session, principal, project_id, body.role, body.name)


@router.get("/projects/{project_id}/keys", response_model=list[KeyOut])
def list_keys(project_id: ProjectIdPath, principal: Principal = Depends(admin_only),
              session: Session = Depends(get_session)) -> list[KeyOut]:
    return tenancy.list_project_keys(session, principal, project_id)


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: KeyIdPath, principal: Principal = Depends(admin_only),
               session: Session = Depends(get_session)) -> KeyOut:
    return tenancy.revoke_key(session, principal, key_id)


rewards_router = APIRouter(tags=["rewards"])
reward_writers = require_roles(Role.admin, Role.trainer)
_reward_roles = require_roles(Role.admin, Role.trainer, Role.reward)


def reward_callers(principal: Principal = Depends(_reward_roles)) -> Principal:
    """Who may score: admin, trainer, and reward-scoped tokens (rate-limited)."""
    limit_reward_token(principal, get_settings().reward_token_requests_per_s)
    return principal


@rewards_router.post("/v1/rewards", response_model=RewardsResponse,
                     responses={200: {"content": {"application/x-ndjson": {}}}})
async def score_rewards(body: RewardsRequest, request: Request,
                        idempotency_key: str | None = Header(
                            default=None, alias="Idempotency-Key", min_length=1, max_length=200,
                            description="A retry with the same key and body returns the stored answer "
                                        "(`Idempotent-Replayed: true`) instead of grading again."),
                        principal: Principal = Depends(reward_callers)) -> Response:
    """Score a batch. Per item: `score` (null unless `status` is `ok`), `status`, `sub_scores`, `details`."""
    return await rewards.score(principal, body, request.headers["authorization"], idempotency_key)


@rewards_router.post("/get_reward", response_model=OpenRLHFRewardResponse)
async def openrlhf_get_reward(
        body: OpenRLHFRewardRequest, request: Request,
        spec_ref: str = Query(min_length=1, max_length=120, description="Stored spec, `name@version`."),
        project_id: str | None = Query(default=None, pattern=ID_PATTERN),
        on_non_ok: Literal["zero", "error"] = Query(default="zero", description=(
            "Items that cannot be graded: score 0.0 and flagged in extra_logs, or fail the request.")),
        principal: Principal = Depends(reward_callers)) -> OpenRLHFRewardResponse:
    """OpenRLHF `--reward.remote_url` endpoint (key as Bearer, or as the URL's password)."""
    return await openrlhf.get_reward(principal, body, spec_ref, project_id, on_non_ok,
                                     request.headers["authorization"])


def path_reward_token(token: str = Path(min_length=8, max_length=200, description=(
        "A reward-scoped token (`rewardhub keys create --role reward`): it can only score."))) -> Principal:
    principal = principal_for_key(token)
    if principal.role != Role.reward:
        # Only reward tokens may ride in a URL: a logged URL must never carry a key that administers.
        raise Forbidden("only a reward-scoped token (role reward) may be given in the URL path; send other "
                        "keys as Authorization: Bearer", field="token")
    limit_reward_token(principal, get_settings().reward_token_requests_per_s)
    return principal


@rewards_router.post("/get_reward/{token}", response_model=OpenRLHFRewardResponse)
async def openrlhf_get_reward_with_path_token(
        body: OpenRLHFRewardRequest,
        spec_ref: str = Query(min_length=1, max_length=120, description="Stored spec, `name@version`."),
        project_id: str | None = Query(default=None, pattern=ID_PATTERN),
        on_non_ok: Literal["zero", "error"] = Query(default="zero"),
        principal: Principal = Depends(path_reward_token),
        token: str = Path(min_length=8, max_length=200)) -> OpenRLHFRewardResponse:
    """OpenRLHF endpoint for clients that only take a URL: `/get_reward/<reward token>?spec_ref=…`."""
    return await openrlhf.get_reward(principal, body, spec_ref, project_id, on_non_ok, f"Bearer {token}")


@rewards_router.post("/v1/projects/{project_id}/reward-specs", response_model=RewardSpecOut, status_code=201)
def create_reward_spec(project_id: ProjectIdPath, body: RewardSpecCreate,
                       principal: Principal = Depends(reward_writers),
                       session: Session = Depends(get_session)) -> RewardSpecOut:
    """Add a version of a named spec (the first POST of a name is version 1)."""
    get_accessible_project(session, principal, project_id)
    record = reward_specs_store.add_version(session, project_id, body.name, body.spec.model_dump(mode="json"),
                                            body.description)
    return reward_specs_store.spec_out(record)


@rewards_router.get("/v1/projects/{project_id}/reward-specs", response_model=list[RewardSpecOut])
def list_reward_specs(project_id: ProjectIdPath, principal: Principal = Depends(current_principal),
                      session: Session = Depends(get_session)) -> list[RewardSpecOut]:
    """The latest version of each spec."""
    get_accessible_project(session, principal, project_id)
    return [reward_specs_store.spec_out(r) for r in reward_specs_store.list_latest(session, project_id)]


@rewards_router.get("/v1/projects/{project_id}/reward-specs/{ref}", response_model=RewardSpecOut)
def get_reward_spec(project_id: ProjectIdPath, ref: str = Path(max_length=120, description="`name` or `name@version`"),
                    principal: Principal = Depends(current_principal),
                    session: Session = Depends(get_session)) -> RewardSpecOut:
    get_accessible_project(session, principal, project_id)
    return reward_specs_store.spec_out(reward_specs_store.resolve(session, project_id, ref, field="ref"))


def create_app() -> FastAPI:
    return create_service_app(
        "gateway", [router, rewards_router], title="rewardhub gateway",
        description="Projects, API keys and the public reward API (`/v1/rewards`). "
                    "Every endpoint except health and metrics needs `Authorization: Bearer <key>`.")

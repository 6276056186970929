"""Tenancy routes: the caller's own key, projects, and the API keys of a project."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.auth import AdminOnly, CurrentPrincipal, get_accessible_project
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import KeyIdPath, ProjectIdPath
from services.gateway import tenancy
from services.gateway.deps import SessionDep
from services.gateway.schemas import KeyCreate, KeyCreated, KeyOut, Me, ProjectCreate, ProjectOut

router = APIRouter(prefix="/v1", tags=["tenancy"])


@router.get("/me", response_model=Me)
def me(principal: CurrentPrincipal) -> Me:
    return Me(key_id=principal.key_id, role=principal.role, all_projects=principal.all_projects,
              project_ids=sorted(principal.project_ids))


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectCreate, principal: AdminOnly, session: SessionDep) -> ProjectOut:
    """Create a project (names are unique, so a retried create answers 409 rather than making a second)."""
    project = tenancy.create_project(session, principal, body.name, body.description)
    return ProjectOut.model_validate(project)


@router.get("/projects", response_model=Page[ProjectOut])
def list_projects(principal: CurrentPrincipal, session: SessionDep, cursor: CursorParam = None,
                  limit: LimitParam = DEFAULT_LIMIT) -> Page[ProjectOut]:
    """The projects this key can see, oldest first."""
    return tenancy.list_projects(session, principal, cursor, limit)


@router.get("/projects/{project_id}", response_model=ProjectOut)
def get_project(project_id: ProjectIdPath, principal: CurrentPrincipal, session: SessionDep) -> ProjectOut:
    return ProjectOut.model_validate(get_accessible_project(session, principal, project_id))


@router.post("/projects/{project_id}/keys", response_model=KeyCreated, status_code=201)
def create_key(project_id: ProjectIdPath, body: KeyCreate, principal: AdminOnly, session: SessionDep) -> KeyCreated:
    return tenancy.issue_project_key(session, principal, project_id, body.role, body.name)


@router.get("/projects/{project_id}/keys", response_model=Page[KeyOut])
def list_keys(project_id: ProjectIdPath, principal: AdminOnly, session: SessionDep, cursor: CursorParam = None,
              limit: LimitParam = DEFAULT_LIMIT) -> Page[KeyOut]:
    """The project's keys (revoked ones too), oldest first."""
    return tenancy.list_project_keys(session, principal, project_id, cursor, limit)


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: KeyIdPath, principal: AdminOnly, session: SessionDep) -> KeyOut:
    return tenancy.revoke_key(session, principal, key_id)

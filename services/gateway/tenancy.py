"""Projects and API keys: the gateway's tenancy logic."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.auth import Principal, create_api_key, forget_key, get_accessible_project
from services.common.db import utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import ApiKey, Project, Role, api_key_projects
from services.common.pagination import Page, keyset_page
from services.gateway.schemas import KeyCreated, KeyOut, ProjectOut


def create_project(session: Session, principal: Principal, name: str, description: str) -> Project:
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named {name!r} already exists", field="name")
    project = Project(name=name, description=description)
    session.add(project)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the race
        session.rollback()
        raise Conflict(f"a project named {name!r} already exists", field="name") from exc
    if not principal.all_projects:
        # The admin who creates a project can manage it.
        key = session.get(ApiKey, principal.key_id)
        if key is not None:
            key.projects.append(project)
            session.flush()
            forget_key(key.key_hash)  # its scope grew: the cached principal is stale
    return project


def list_projects(session: Session, principal: Principal, cursor: str | None, limit: int) -> Page[ProjectOut]:
    """The projects the key can see, oldest first, a page at a time."""
    query = select(Project)
    if not principal.all_projects:
        query = query.where(Project.id.in_(principal.project_ids))
    rows, next_cursor = keyset_page(session, query, (Project.created_at, Project.id), cursor, limit)
    return Page(data=[ProjectOut.model_validate(p) for p in rows], next_cursor=next_cursor)


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(id=key.id, name=key.name, prefix=key.prefix, role=key.role, all_projects=key.all_projects,
                  project_ids=[p.id for p in key.projects], created_at=key.created_at,
                  revoked_at=key.revoked_at, last_used_at=key.last_used_at)


def issue_project_key(session: Session, principal: Principal, project_id: str, role: Role, name: str) -> KeyCreated:
    project = get_accessible_project(session, principal, project_id)
    key, clear = create_api_key(session, role=role, projects=[project], name=name)
    return KeyCreated(**key_out(key).model_dump(), key=clear)


def list_project_keys(session: Session, principal: Principal, project_id: str, cursor: str | None,
                      limit: int) -> Page[KeyOut]:
    """The keys scoped to the project (revoked ones too), oldest first, a page at a time."""
    project = get_accessible_project(session, principal, project_id)
    in_project = select(api_key_projects.c.api_key_id).where(api_key_projects.c.project_id == project.id)
    query = select(ApiKey).where(ApiKey.id.in_(in_project))
    rows, next_cursor = keyset_page(session, query, (ApiKey.created_at, ApiKey.id), cursor, limit)
    return Page(data=[key_out(k) for k in rows], next_cursor=next_cursor)


def revoke_key(session: Session, principal: Principal, key_id: str) -> KeyOut:
    key = session.get(ApiKey, key_id)
    # A key outside the caller's projects is reported as absent, like a foreign project.
    visible = key is not None and (principal.all_projects or (
        not key.all_projects and any(principal.can_access(p.id) for p in key.projects)))
    if key is None or not visible:
        raise NotFound(f"API key {key_id!r} not found", field="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    session.flush()
    forget_key(key.key_hash)
    return key_out(key)

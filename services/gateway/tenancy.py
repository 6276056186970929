"""Projects and API keys: the gateway's tenancy logic."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.auth import Principal, create_api_key, forget_key, get_accessible_project
from services.common.db import utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import ApiKey, Project, Role
from services.gateway.schemas import KeyCreated, KeyOut


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


def list_projects(session: Session, principal: Principal) -> list[Project]:
    query = select(Project).order_by(Project.created_at, Project.name)
    if not principal.all_projects:
        query = query.where(Project.id.in_(principal.project_ids))
    return list(session.scalars(query))


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(id=key.id, name=key.name, prefix=key.prefix, role=key.role, all_projects=key.all_projects,
                  project_ids=[p.id for p in key.projects], created_at=key.created_at,
                  revoked_at=key.revoked_at, last_used_at=key.last_used_at)


def issue_project_key(session: Session, principal: Principal, project_id: str, role: Role, name: str) -> KeyCreated:
    project = get_accessible_project(session, principal, project_id)
    key, clear = create_api_key(session, role=role, projects=[project], name=name)
    return KeyCreated(**key_out(key).model_dump(), key=clear)


def list_project_keys(session: Session, principal: Principal, project_id: str) -> list[KeyOut]:
    project = get_accessible_project(session, principal, project_id)
    keys = session.scalars(select(ApiKey).order_by(ApiKey.created_at))
    return [key_out(k) for k in keys if any(p.id == project.id for p in k.projects)]


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

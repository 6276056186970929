"""What an admin of the web UI may act on: the principal an admin account acts as, and the tenancy
projects a new annotation project may belong to.

An admin API key acts as itself. An annotator account with role ``admin`` holds no key: it acts as an
admin of the tenancy projects its annotation projects belong to, never as an all-projects principal.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation import accounts
from services.annotation.models import Annotator, AnnotatorRole
from services.common.auth import Principal
from services.common.errors import Forbidden
from services.common.models import Project, Role


def account_principal(session: Session, annotator: Annotator) -> Principal:
    """An admin account as a principal scoped to the tenancy projects of its annotation projects."""
    if annotator.role is not AnnotatorRole.admin:
        raise Forbidden("the admin screens are for admin accounts and admin API keys", code="admin_only")
    tenancy = frozenset(p.project_id for p in accounts.member_projects(session, annotator.id))
    return Principal(key_id=f"account-{annotator.id}", role=Role.admin, all_projects=False, project_ids=tenancy)


def tenancy_projects(session: Session, principal: Principal) -> list[Project]:
    """The tenancy projects a new annotation project may belong to, by name."""
    query = select(Project).order_by(Project.name, Project.id)
    if not principal.all_projects:
        query = query.where(Project.id.in_(principal.project_ids))
    return list(session.scalars(query))

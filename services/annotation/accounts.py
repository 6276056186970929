"""Annotator accounts: argon2id password hashes, roles, project membership, API-key annotators.

A person logs in to the web UI with a username and password; a script labels through the JSON
API with an annotator API key, which stands for an account of its own (created on first use),
so both kinds of caller meet the queue as the same ``Annotator`` rows.
"""

from __future__ import annotations

import contextlib
import re
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.annotation.models import AnnotationProject, Annotator, AnnotatorMembership, AnnotatorRole
from services.common.auth import Principal, hash_key
from services.common.db import utcnow
from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.common.models import ApiKey, Role
from services.common.pagination import keyset_page

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{2,63}$")
MIN_PASSWORD_CHARS = 10
KEY_USERNAME_PREFIX = "key-"


@lru_cache(maxsize=1)
def password_hasher() -> PasswordHasher:
    # argon2-cffi's defaults follow RFC 9106's low-memory recommendation (argon2id, 64 MiB, t=3).
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return password_hasher().hash("not-a-real-password-used-for-timing")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(f"password must have at least {MIN_PASSWORD_CHARS} characters", field="password")
    return password_hasher().hash(password)


def create_annotator(session: Session, username: str, password: str, *,
                     role: AnnotatorRole = AnnotatorRole.annotator, display_name: str = "",
                     project_ids: list[str] | tuple[str, ...] = ()) -> Annotator:
    """Create a login account and add it to the given annotation projects (ids)."""
    if not USERNAME.match(username) or username.startswith(KEY_USERNAME_PREFIX):
        raise InvalidInput("username must be 3-64 characters of letters, digits, '_', '.', '-', start with a "
                           f"letter or digit, and not start with {KEY_USERNAME_PREFIX!r}", field="username")
    if session.scalar(select(Annotator.id).where(Annotator.username == username)) is not None:
        raise Conflict(f"username {username!r} is taken", field="username")
    annotator = Annotator(username=username, password_hash=hash_password(password), role=role,
                          display_name=display_name)
    session.add(annotator)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name
        raise Conflict(f"username {username!r} is taken", field="username") from exc
    for project_id in project_ids:
        add_membership(session, annotator.id, project_id)
    return annotator


def authenticate(session: Session, username: str, password: str) -> Annotator | None:
    """The enabled account with this username and password, or None (same cost either way)."""
    annotator = session.scalar(select(Annotator).where(Annotator.username == username))
    hasher = password_hasher()
    if annotator is None or annotator.password_hash is None or annotator.disabled_at is not None:
        # Hash anyway, so a wrong username takes as long as a wrong password.
        with contextlib.suppress(VerificationError):
            hasher.verify(_dummy_hash(), password)
        return None
    try:
        hasher.verify(annotator.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if hasher.check_needs_rehash(annotator.password_hash):
        annotator.password_hash = hasher.hash(password)
    return annotator


def set_password(session: Session, annotator_id: str, password: str) -> None:
    annotator = session.get(Annotator, annotator_id)
    if annotator is None:
        raise InvalidInput(f"annotator {annotator_id!r} not found", field="annotator_id")
    annotator.password_hash = hash_password(password)


def disable(session: Session, annotator_id: str) -> None:
    annotator = session.get(Annotator, annotator_id)
    if annotator is not None and annotator.disabled_at is None:
        annotator.disabled_at = utcnow()


def add_membership(session: Session, annotator_id: str, annotation_project_id: str) -> None:
    if session.get(AnnotationProject, annotation_project_id) is None:
        raise InvalidInput(f"annotation project {annotation_project_id!r} not found", field="project_ids")
    if session.get(AnnotatorMembership, (annotator_id, annotation_project_id)) is None:
        session.add(AnnotatorMembership(annotator_id=annotator_id, annotation_project_id=annotation_project_id))
        session.flush()


def is_member(session: Session, annotator_id: str, annotation_project_id: str) -> bool:
    return session.get(AnnotatorMembership, (annotator_id, annotation_project_id)) is not None


def member_projects(session: Session, annotator_id: str) -> list[AnnotationProject]:
    """The annotation projects an account may label in, oldest first."""
    return list(session.scalars(
        select(AnnotationProject).join(AnnotatorMembership,
                                       AnnotatorMembership.annotation_project_id == AnnotationProject.id)
        .where(AnnotatorMembership.annotator_id == annotator_id)
        .order_by(AnnotationProject.created_at, AnnotationProject.id)))


def can_adjudicate(annotator: Annotator) -> bool:
    return annotator.role in (AnnotatorRole.reviewer, AnnotatorRole.admin)


def require_adjudicator(annotator: Annotator) -> None:
    if not can_adjudicate(annotator):
        raise Forbidden("adjudicating needs a reviewer or admin annotator account")


def annotator_for_key(session: Session, principal: Principal) -> Annotator:
    """The account that stands for an API key in the queue (created on first use)."""
    annotator = session.scalar(select(Annotator).where(Annotator.api_key_id == principal.key_id))
    if annotator is not None:
        return annotator
    role = AnnotatorRole.admin if principal.role is Role.admin else AnnotatorRole.annotator
    annotator = Annotator(username=f"{KEY_USERNAME_PREFIX}{principal.key_id}", role=role,
                          api_key_id=principal.key_id, display_name=f"API key {principal.key_id[:8]}")
    # A savepoint: a concurrent first call of the same key must not undo the caller's transaction.
    try:
        with session.begin_nested():
            session.add(annotator)
    except IntegrityError:
        existing = session.scalar(select(Annotator).where(Annotator.api_key_id == principal.key_id))
        if existing is None:
            raise
        return existing
    return annotator


def members_page(session: Session, annotation_project_id: str, cursor: str | None,
                 limit: int) -> tuple[list[Annotator], str | None]:
    """One page of the project's member accounts, by username."""
    query = (select(Annotator).join(AnnotatorMembership, AnnotatorMembership.annotator_id == Annotator.id)
             .where(AnnotatorMembership.annotation_project_id == annotation_project_id))
    return keyset_page(session, query, (Annotator.username, Annotator.id), cursor, limit)


def admin_key(session: Session, clear_key: str) -> ApiKey | None:
    """The API key behind a clear key typed into the login page (revoked ones included)."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(clear_key)))


def visible_account(session: Session, principal: Principal, *, username: str | None = None,
                    annotator_id: str | None = None) -> Annotator:
    """A login account an admin key may hand to another project: one that is already a member of some
    annotation project in the key's scope (any account for an all-projects key). Others are reported
    absent, so a key scoped to one project cannot find accounts of another tenancy by name."""
    field = "username" if username is not None else "annotator_id"
    query = select(Annotator).where(Annotator.username == username if username is not None
                                    else Annotator.id == annotator_id)
    annotator = session.scalar(query)
    if annotator is not None and not principal.all_projects:
        shared = session.scalar(
            select(AnnotationProject.id).join(AnnotatorMembership,
                                              AnnotatorMembership.annotation_project_id == AnnotationProject.id)
            .where(AnnotatorMembership.annotator_id == annotator.id,
                   AnnotationProject.project_id.in_(principal.project_ids)).limit(1))
        if shared is None:
            annotator = None
    if annotator is None:
        raise NotFound(f"no account {username or annotator_id!r} that your key can see", field=field)
    if annotator.api_key_id is not None:
        raise InvalidInput("this account stands for an API key: its projects follow the key's scope",
                           field=field)
    if annotator.disabled_at is not None:
        raise Conflict("this account is disabled", field=field, code="account_disabled")
    return annotator


def add_existing_member(session: Session, principal: Principal, annotation_project_id: str, *,
                        username: str | None = None, annotator_id: str | None = None) -> tuple[Annotator, bool]:
    """Add an existing login account (annotator, reviewer or admin) to one more project; (account, added)."""
    annotator = visible_account(session, principal, username=username, annotator_id=annotator_id)
    if is_member(session, annotator.id, annotation_project_id):
        return annotator, False
    try:
        with session.begin_nested():  # a concurrent add of the same member is a no-op, not a 500
            add_membership(session, annotator.id, annotation_project_id)
    except IntegrityError:
        return annotator, False
    return annotator, True


def remove_member(session: Session, annotation_project_id: str, annotator_id: str) -> bool:
    """Take an account out of a project (its labels stay); whether it was a member."""
    membership = session.get(AnnotatorMembership, (annotator_id, annotation_project_id))
    if membership is None:
        return False
    session.delete(membership)
    session.flush()
    return True

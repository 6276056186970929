"""API-key authentication and project scoping, shared by every service.

Keys are random 256-bit tokens, so a single SHA-256 is a sound way to store them: unlike
passwords they cannot be guessed, and a fast hash keeps the per-request check cheap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import session_scope, utcnow
from services.common.errors import Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from services.common.models import ApiKey, Project, Role

KEY_PREFIX = "rh_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The caller behind a request's API key."""

    key_id: str
    role: Role
    all_projects: bool
    project_ids: frozenset[str] = field(default_factory=frozenset)

    def can_access(self, project_id: str) -> bool:
        return self.all_projects or project_id in self.project_ids


def create_api_key(session: Session, *, role: Role, projects: Iterable[Project] = (), name: str = "",
                   all_projects: bool = False) -> tuple[ApiKey, str]:
    """Store a new key (hashed) and return it with the clear key, which is shown only once."""
    clear = generate_key()
    key = ApiKey(name=name, prefix=clear[:10], key_hash=hash_key(clear), role=role,
                 all_projects=all_projects, projects=list(projects))
    session.add(key)
    session.flush()
    return key, clear


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "basic" and token:
        # Tools that only take a URL (OpenRLHF's --remote_rm_url) can carry the key as the
        # password of http://user:KEY@host/..., which HTTP clients send as Basic auth.
        try:
            _, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if password:
            return password
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing or malformed Authorization header; expected 'Bearer <api key>'",
                           field="Authorization")
    return token


# A short cache keeps the hot path (every reward call) off the database. Revocation in this
# process takes effect at once (forget_key); in other processes within PRINCIPAL_TTL_S.
PRINCIPAL_TTL_S = 2.0
_principal_cache: dict[str, tuple[float, Principal]] = {}
_cache_lock = threading.Lock()


def forget_key(key_hash: str) -> None:
    with _cache_lock:
        _principal_cache.pop(key_hash, None)


def _lookup(key_hash: str) -> Principal:
    # Its own short transaction: a request must not hold a connection (or SQLite's write lock)
    # while it awaits other services.
    with session_scope() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        if key is None or key.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key", field="Authorization")
        now = utcnow()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
            key.last_used_at = now
        return Principal(key_id=key.id, role=key.role, all_projects=key.all_projects,
                         project_ids=frozenset(p.id for p in key.projects))


def current_principal(request: Request) -> Principal:
    principal = principal_for_key(_bearer_token(request))
    request.state.principal = principal
    return principal


def principal_for_key(key: str) -> Principal:
    """The caller behind a clear key (from a header, or a reward token from a URL path)."""
    key_hash = hash_key(key)
    now = time.monotonic()
    with _cache_lock:
        cached = _principal_cache.get(key_hash)
    if cached is not None and now - cached[0] < PRINCIPAL_TTL_S:
        principal = cached[1]
    else:
        principal = _lookup(key_hash)
        with _cache_lock:
            if len(_principal_cache) > 10_000:
                _principal_cache.clear()
            _principal_cache[key_hash] = (now, principal)
    return principal


def require_roles(*roles: Role) -> Callable[..., Principal]:
    """Dependency factory: the caller's role must be one of ``roles``."""
    allowed = frozenset(roles)

    def _check(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise Forbidden(f"this endpoint needs one of the roles: {names}; your key's role is "
                            f"{principal.role.value}")
        return principal

    return _check


# The role sets every service checks, declared once: routes take them as typed parameters
# (``principal: TrainerOrAdmin``) instead of building their own ``require_roles`` each.
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
AdminOnly = Annotated[Principal, Depends(require_roles(Role.admin))]
TrainerOrAdmin = Annotated[Principal, Depends(require_roles(Role.admin, Role.trainer))]
# Who may score (rewards, grading, judging): trainers, admins and reward-scoped tokens. Rate limits
# for reward tokens are the gateway's to apply (it is the public edge).
Scorer = Annotated[Principal, Depends(require_roles(Role.admin, Role.trainer, Role.reward))]
# Annotation's two role sets: who may read a queue's state, and who may label.
AnnotationReader = Annotated[Principal, Depends(require_roles(Role.admin, Role.trainer, Role.annotator))]
AnnotatorOrAdmin = Annotated[Principal, Depends(require_roles(Role.admin, Role.annotator))]


def ensure_project_access(principal: Principal, project_id: str) -> None:
    """A project outside the key's scope is reported as absent, so keys cannot probe other tenants."""
    if not principal.can_access(project_id):
        raise NotFound(f"project {project_id!r} not found", field="project_id")


def get_accessible_project(session: Session, principal: Principal, project_id: str) -> Project:
    ensure_project_access(principal, project_id)
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id!r} not found", field="project_id")
    return project


def choose_project(principal: Principal, requested: str | None) -> str:
    """The project a request acts on: the one it names, or the key's only project."""
    if requested is not None:
        return requested
    if not principal.all_projects and len(principal.project_ids) == 1:
        return next(iter(principal.project_ids))
    raise InvalidInput("project_id is required: this key has access to more than one project",
                       field="project_id")


class RewardTokenLimiter:
    """A token bucket per reward-scoped key: ``rate`` requests a second, bursts of ``2 × rate``.

    Per process (each gateway replica has its own buckets): it bounds what one leaked token can
    spend, it is not a quota. Keys of the other roles are not limited here.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float) -> float:
        """Spend one request; 0.0 when allowed, else the seconds until one is available."""
        if rate <= 0:
            return 0.0
        burst = max(1.0, 2 * rate)
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate


reward_token_limiter = RewardTokenLimiter()


def limit_reward_token(principal: Principal, rate: float) -> None:
    """Raise 429 (with the wait) when a reward-scoped key exceeds its rate."""
    if principal.role != Role.reward:
        return
    wait_s = reward_token_limiter.take(principal.key_id, rate)
    if wait_s > 0:
        raise RateLimited(f"this reward token is limited to {rate:g} requests per second; retry in {wait_s:.2f}s",
                          retry_after_s=wait_s)

"""The annotation routes' dependencies, declared once: session, callers by role, clock, path ids, keys.

Use them as parameter types (``session: SessionDep``, ``principal: Admin``, ``now: Now``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Path

from services.common.auth import Principal, require_roles
from services.common.db import SessionDep as SessionDep
from services.common.idempotency import HEADER
from services.common.models import Role
from services.common.validation import ID_PATTERN

# The two role sets of the annotation API, plus the admin-only and read-only ones.
Admin = Annotated[Principal, Depends(require_roles(Role.admin))]
Trainer = Annotated[Principal, Depends(require_roles(Role.admin, Role.trainer))]
Reader = Annotated[Principal, Depends(require_roles(Role.admin, Role.trainer, Role.annotator))]
AnnotatorKey = Annotated[Principal, Depends(require_roles(Role.admin, Role.annotator))]


def request_time() -> datetime | None:
    """The time a request acts at. None means "the real clock, read after locks are taken";
    tests override this dependency to drive lease expiry without sleeping."""
    return None


Now = Annotated[datetime | None, Depends(request_time)]

ProjectPath = Annotated[str, Path(pattern=ID_PATTERN, description="An annotation project id (32 hex characters).")]
ItemPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id (32 hex characters).")]
IdempotencyKey = Annotated[str | None, Header(alias=HEADER, min_length=1, max_length=200, description=(
    "A retry with the same key returns the first answer and changes nothing."))]
# A submission's key is stored with its annotation, which holds up to 100 characters.
SubmissionKey = Annotated[str | None, Header(alias=HEADER, min_length=1, max_length=100, description=(
    "A retry with the same key returns the first answer (status 200, `replayed: true`)."))]

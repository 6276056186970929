"""The annotation routes' dependencies, declared once: session, callers by role, clock, path ids, keys.

Use them as parameter types (``session: SessionDep``, ``principal: Admin``, ``now: Now``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Path

# The role sets are declared once, in services.common.auth; these are the annotation routes' names.
from services.common.auth import AdminOnly as Admin
from services.common.auth import AnnotationReader as Reader
from services.common.auth import AnnotatorOrAdmin as AnnotatorKey
from services.common.auth import TrainerOrAdmin as Trainer
from services.common.db import SessionDep
from services.common.idempotency import HEADER
from services.common.validation import ID_PATTERN
from services.common.validation import IdempotencyKeyHeader as IdempotencyKey
from services.common.validation import ItemIdPath as ItemPath

__all__ = ["Admin", "AnnotatorKey", "IdempotencyKey", "ItemPath", "Now", "ProjectPath", "Reader", "SessionDep",
           "SubmissionKey", "Trainer", "request_time"]


def request_time() -> datetime | None:
    """The time a request acts at. None means "the real clock, read after locks are taken";
    tests override this dependency to drive lease expiry without sleeping."""
    return None


Now = Annotated[datetime | None, Depends(request_time)]

ProjectPath = Annotated[str, Path(pattern=ID_PATTERN, description="An annotation project id (32 hex characters).")]
# A submission's key is stored with its annotation, which holds up to 100 characters.
SubmissionKey = Annotated[str | None, Header(alias=HEADER, min_length=1, max_length=100, description=(
    "A retry with the same key returns the first answer (status 200, `replayed: true`)."))]

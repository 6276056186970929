"""The annotation routes' dependencies, declared once: session, callers by role, clock, path ids, keys.

Use them as parameter types (``session: SessionDep``, ``principal: Admin``, ``now: Now``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Header, Path, Query

from services.annotation.browse import Filters

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

__all__ = ["Admin", "AnnotatorKey", "BrowseFilters", "IdempotencyKey", "ItemPath", "Now", "ProjectPath", "Reader", "SessionDep",
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


def browse_filters(
        q: Annotated[str | None, Query(max_length=500, description="Text the prompt contains (any case).")] = None,
        status: Annotated[Literal["open", "labelled", "disputed", "adjudicated", "skipped"] | None, Query(
            description="open, labelled, disputed (waiting for a reviewer), adjudicated, skipped.")] = None,
        annotator: Annotated[str | None, Query(max_length=64, description="Labelled by this username.")] = None,
        max_agreement: Annotated[float | None, Query(ge=0, le=1, description=(
            "Agreement at most this (1 = unanimous); 0.99 keeps every disagreement."))] = None,
        question: Annotated[str | None, Query(max_length=64, description="A question id (with value).")] = None,
        value: Annotated[str | None, Query(max_length=2000, description=(
            "The question's final value (a choice, a rating, a preference's A/B/tie, a math answer)."))] = None,
) -> Filters:
    """The browser's filters, also applied by the exports."""
    return Filters(q=q or None, status=status, annotator=annotator or None, max_agreement=max_agreement,
                   question=question or None, value=value if question else None)


BrowseFilters = Annotated[Filters, Depends(browse_filters)]

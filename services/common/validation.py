"""Reusable input types: text a database can store (no NUL, no lone surrogate), and resource ids in paths."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path, Query
from pydantic import AfterValidator, BeforeValidator


def text_problem(value: str, limit: int | None = None) -> str | None:
    """What makes a string unusable: too long, a NUL character (PostgreSQL text cannot hold it), or a
    lone surrogate (``"\\ud800"`` in JSON: not Unicode text, no database or JSON encoder takes it)."""
    if limit is not None and len(value) > limit:
        return f"is {len(value)} characters long; the limit is {limit}"
    at = value.find("\x00")
    if at >= 0:
        return f"contains a NUL character at position {at}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"contains a lone surrogate (U+{ord(value[exc.start]):04X}) at position {exc.start}, "
                f"which is not valid Unicode text")
    return None


def _storable(value: Any) -> Any:
    # Rejected at the edge with the field's name, not deep in SQL or in an encoder. Checked before
    # pydantic's own str validation, which refuses a lone surrogate with a message that does not say why.
    problem = text_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


StoredText = Annotated[str, BeforeValidator(_storable)]


def _non_blank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# A name: stored text, surrounding white space dropped, never blank.
NameText = Annotated[str, BeforeValidator(_storable), AfterValidator(_non_blank)]

ID_PATTERN = r"^[0-9a-f]{32}$"
ProjectIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A project id (32 hex characters).")]
KeyIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An API key id (32 hex characters).")]
RunIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A training run id (32 hex characters).")]
JobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A job id (32 hex characters).")]
RubricIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A stored rubric id (32 hex characters).")]
ItemIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An item id (32 hex characters).")]
ProjectIdQuery = Annotated[str | None, Query(pattern=ID_PATTERN, description="A project id (32 hex characters); "
                                             "optional when the key has only one project.")]
# The one spelling of the idempotency header on every create endpoint (services.common.idempotency).
IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="Send one so that a retry (after a timeout, a 503 or a lost answer) returns the stored answer "
                "(`Idempotent-Replayed: true`) instead of doing the work twice.")]

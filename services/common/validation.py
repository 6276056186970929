"""Reusable input types: text a database can store, and resource ids in paths."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; reject it at the edge with the field's name, not deep in SQL.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\x00) characters")
    return value


StoredText = Annotated[str, AfterValidator(_no_nul)]


def _non_blank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# A name: stored text, surrounding white space dropped, never blank.
NameText = Annotated[str, AfterValidator(_no_nul), AfterValidator(_non_blank)]

ID_PATTERN = r"^[0-9a-f]{32}$"
ProjectIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A project id (32 hex characters).")]
KeyIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An API key id (32 hex characters).")]

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

ID_PATTERN = r"^[0-9a-f]{32}$"
ProjectIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A project id (32 hex characters).")]
KeyIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An API key id (32 hex characters).")]

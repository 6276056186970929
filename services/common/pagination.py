"""The one pagination envelope of every list endpoint: ``{"data": [...], "next_cursor": "..." | null}``.

Keyset (cursor) pagination, never offsets: a page is the rows strictly after the cursor in a total
order (a unique key last, e.g. ``(created_at, id)``), so rows inserted meanwhile neither repeat nor
vanish between pages and deep pages cost the same as the first. The cursor is opaque to clients: the
ordering key values of the page's last row, as URL-safe base64 of JSON. ``limit`` is bounded
(``MAX_LIMIT``); a bad cursor is a 422 naming ``cursor``.

Use::

    @router.get("/things", response_model=Page[ThingOut])
    def list_things(session: SessionDep, cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT):
        rows, next_cursor = keyset_page(session, select(Thing).where(...), (Thing.created_at, Thing.id),
                                        cursor, limit)
        return Page(data=[ThingOut.from_row(r) for r in rows], next_cursor=next_cursor)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from services.common.errors import InvalidInput

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_CURSOR_CHARS = 512

CursorParam = Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS,
                                          description="`next_cursor` of the previous page; omit for the first.")]
LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (1–{MAX_LIMIT}).")]


class Page(BaseModel, Generic[T]):
    """One page of a list: its rows, and the cursor of the next page (null on the last one)."""

    data: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` to read the next page; null on the last page.")


def _jsonable(value: Any) -> Any:
    return {"$dt": value.isoformat()} if isinstance(value, datetime) else value


def _restored(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$dt"} and isinstance(value["$dt"], str):
        return datetime.fromisoformat(value["$dt"])
    return value


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps([_jsonable(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    """The ordering key values in ``cursor``; 422 naming ``cursor`` for anything this API did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != width:
            raise ValueError("wrong shape")
        return [_restored(v) for v in values]
    except (binascii.Error, ValueError, UnicodeDecodeError, TypeError):
        raise InvalidInput("cursor: not a cursor this list issued; pass back `next_cursor` as it came",
                           field="cursor") from None


def keyset_page(session: Session, query: Select[Any], order_by: Sequence[InstrumentedAttribute[Any]],
                cursor: str | None, limit: int, *, descending: bool = False) -> tuple[list[Any], str | None]:
    """One page of ``query`` in ``order_by`` order (its last column unique), after ``cursor``: ascending,
    or with ``descending`` newest/largest first (every column in the same direction)."""
    if cursor:
        after = decode_cursor(cursor, len(order_by))
        # Bound with each column's own type, so a timestamp compares as the column stores it.
        bound = tuple_(*[literal(value, column.type) for value, column in zip(after, order_by, strict=True)])
        key = tuple_(*order_by)
        query = query.where(key < bound if descending else key > bound)
    ordering = [column.desc() for column in order_by] if descending else list(order_by)
    rows = list(session.scalars(query.order_by(*ordering).limit(limit + 1)))
    page = rows[:limit]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor([getattr(last, column.key) for column in order_by])

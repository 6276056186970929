"""Items, interactions and the upload formats they are imported from (JSONL, CSV, Parquet).

An item is ``{item_id, title, attributes{}}``; an interaction ``{user_id, item_id, event, timestamp,
context}``. Every file is parsed whole before anything is stored, and the first bad row is a 4xx
naming it (``file: line 7: item_id: is missing``).

Choices (the spec leaves them open):

* Format: from ``format`` when given, else the file name's extension (``.jsonl``/``.ndjson``,
  ``.csv``, ``.parquet``).
* CSV and Parquet are flat: every column besides ``item_id`` and ``title`` is an attribute; a cell
  holding a JSON list or object (``["thai","vegan"]``) is read as one; a CSV cell that parses as a
  number is a number; an empty cell is no attribute. A JSONL row may carry ``attributes`` as an object
  (then other keys are not allowed) or flat like CSV.
* Interactions: ``timestamp`` is ISO 8601 (a zone-less time is UTC) or seconds since the epoch;
  ``context`` is an object (a JSON string in CSV), absent = ``{}``.
* A duplicate ``item_id`` within one import is an error (a catalog version is a set of items).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.errors import InvalidInput
from services.common.validation import text_problem

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
               ".pq": "parquet"}
MAX_ID_CHARS = 200
MAX_TITLE_CHARS = 2000


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event: str
    timestamp: datetime
    context: dict[str, Any] = field(default_factory=dict)


def title_key(title: str) -> str:
    """How a title is matched: case-folded, white space collapsed, at most 300 characters."""
    return " ".join(title.casefold().split())[:300]


def detect_format(filename: str | None, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise InvalidInput(f"format: must be one of {', '.join(FORMATS)}", field="format")
        return given
    name = (filename or "").lower()
    for extension, fmt in _EXTENSIONS.items():
        if name.endswith(extension):
            return fmt
    raise InvalidInput("format: cannot tell the file's format from its name; pass format=jsonl|csv|parquet",
                       field="format")


def _bad(where: str, message: str) -> InvalidInput:
    return InvalidInput(f"file: {where}: {message}", field="file")


def _cell(value: Any) -> Any:
    """A flat cell as a JSON value: JSON lists/objects and numbers parsed, blanks dropped (None)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist"):  # numpy scalars and arrays from Parquet
        value = value.tolist()
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text[0] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return text


def _rows(data: bytes, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs of the file; ``where`` names the line (JSONL, CSV) or row (Parquet)."""
    if fmt == "jsonl":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(f"byte {exc.start}", "is not UTF-8 text") from exc
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad(f"line {number}", f"is not JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise _bad(f"line {number}", "must be a JSON object")
            rows.append((f"line {number}", row))
        return rows
    if fmt == "csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _bad(f"byte {exc.start}", "is not UTF-8 text") from exc
        reader = csv.DictReader(io.StringIO(text))
        return [(f"line {index + 2}", {k: _cell(v) for k, v in row.items() if k is not None})
                for index, row in enumerate(reader)]
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the rec extra
        raise InvalidInput("format: Parquet needs pyarrow (pip install 'rewardhub[rec]')", field="format") from exc
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise _bad("parquet", f"cannot be read: {exc}") from exc
    return [(f"row {index + 1}", {k: _cell(v) for k, v in row.items()}) for index, row in enumerate(table.to_pylist())]


def _text(row: dict[str, Any], name: str, where: str, limit: int) -> str:
    value = row.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, f"{name}: is missing or not a non-empty string")
    problem = text_problem(value, limit)
    if problem:
        raise _bad(where, f"{name}: {problem}")
    return value.strip()


def _json_value(value: Any, where: str, name: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _bad(where, f"{name}: is not a JSON value ({exc})") from exc
    if isinstance(value, str) and text_problem(value):
        raise _bad(where, f"{name}: {text_problem(value)}")
    return value


def parse_items(data: bytes, fmt: str) -> list[Item]:
    rows = _rows(data, fmt)
    if not rows:
        raise InvalidInput("file: holds no items", field="file")
    items: list[Item] = []
    seen: set[str] = set()
    for where, row in rows:
        item_id = _text(row, "item_id", where, MAX_ID_CHARS)
        title = _text(row, "title", where, MAX_TITLE_CHARS)
        if item_id in seen:
            raise _bad(where, f"item_id: {item_id!r} appears twice in this import")
        seen.add(item_id)
        if isinstance(row.get("attributes"), dict):
            extra = set(row) - {"item_id", "title", "attributes"}
            if extra:
                raise _bad(where, f"with an attributes object, other keys are not allowed: {', '.join(sorted(extra))}")
            attributes = dict(row["attributes"])
        elif row.get("attributes") is not None:
            raise _bad(where, "attributes: must be an object")
        else:
            attributes = {k: v for k, v in row.items() if k not in ("item_id", "title", "attributes") and v is not None}
        for key, value in attributes.items():
            _json_value(value, where, f"attributes.{key}")
        items.append(Item(item_id=item_id, title=title, attributes=attributes))
    return items


def parse_timestamp(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise _bad(where, f"timestamp: {value!r} is not ISO 8601 or epoch seconds") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _bad(where, "timestamp: is missing")


def parse_events(data: bytes, fmt: str) -> list[Event]:
    rows = _rows(data, fmt)
    if not rows:
        raise InvalidInput("file: holds no interactions", field="file")
    events = []
    for where, row in rows:
        context = row.get("context")
        if isinstance(context, str):
            try:
                context = json.loads(context)
            except json.JSONDecodeError as exc:
                raise _bad(where, "context: is not a JSON object") from exc
        if context is None:
            context = {}
        if not isinstance(context, dict):
            raise _bad(where, "context: must be an object")
        _json_value(context, where, "context")
        events.append(Event(user_id=_text(row, "user_id", where, MAX_ID_CHARS),
                            item_id=_text(row, "item_id", where, MAX_ID_CHARS),
                            event=_text(row, "event", where, 64),
                            timestamp=parse_timestamp(row.get("timestamp"), where), context=context))
    return events


def item_text(item: Item) -> str:
    """How an item reads to the embedding model and the judges: its title, then ``key: value`` pairs."""
    parts = []
    for key, value in item.attributes.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key.replace('_', ' ')}: {shown}")
    return f"{item.title}. " + "; ".join(parts) if parts else item.title

"""Reading a corpus upload: JSONL, one passage per line, ``{"id", "title"?, "text"}``.

``_id`` is accepted for ``id`` (the BEIR corpus format); an integer id is read as its decimal string;
other keys are ignored. Blank lines are skipped. Every problem is a 422 naming the line and the key
(``documents[line 3].text``), the first one found; nothing of a bad upload is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInput
from services.common.validation import text_problem

MAX_ID_CHARS = 200
MAX_TITLE_CHARS = 1000


@dataclass(frozen=True)
class DocumentIn:
    id: str
    title: str
    text: str
    line: int


def _field(line: int, key: str) -> str:
    return f"documents[line {line}].{key}" if key else f"documents[line {line}]"


def _bad(line: int, key: str, problem: str) -> InvalidInput:
    field = _field(line, key)
    return InvalidInput(f"{field}: {problem}", field=field)


def _string(value: Any, line: int, key: str, limit: int, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(line, key, f"must be a string, not {type(value).__name__}")
    problem = text_problem(value, limit)
    if problem:
        raise _bad(line, key, problem)
    if required and not value.strip():
        raise _bad(line, key, "must not be blank")
    return value


def _document(raw: Any, line: int, max_text_chars: int) -> DocumentIn:
    if not isinstance(raw, dict):
        raise _bad(line, "", f"must be a JSON object, not {type(raw).__name__}")
    key = "id" if "id" in raw else "_id"
    doc_id = raw.get(key)
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if doc_id is None:
        raise _bad(line, "id", "is required")
    doc_id = _string(doc_id, line, key, MAX_ID_CHARS, required=True)
    title = _string(raw.get("title"), line, "title", MAX_TITLE_CHARS, required=False)
    if "text" not in raw:
        raise _bad(line, "text", "is required")
    text = _string(raw["text"], line, "text", max_text_chars, required=True)
    return DocumentIn(id=doc_id, title=title, text=text, line=line)


def parse_documents(content: bytes, *, max_text_chars: int, max_documents: int) -> list[DocumentIn]:
    """The passages of a JSONL upload, in order; a 422 naming the first bad line and key."""
    try:
        body = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"body: is not valid UTF-8 (byte {exc.start}: {exc.reason})", field="body") from exc
    documents: list[DocumentIn] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(body.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _bad(number, "", f"is not JSON ({exc})") from exc
        document = _document(raw, number, max_text_chars)
        if document.id in first_line:
            raise _bad(number, "id", f"duplicate id {document.id!r} (first on line {first_line[document.id]})")
        first_line[document.id] = number
        documents.append(document)
        if len(documents) > max_documents:
            raise InvalidInput(f"documents: more than {max_documents} passages in one upload; split it",
                               field="documents")
    if not documents:
        raise InvalidInput("documents: the upload holds no passage (JSONL, one {\"id\", \"text\"} object a line)",
                           field="documents")
    return documents

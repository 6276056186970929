"""Reading an agent's reply: the items it recommends and the claims it makes about each.

A structured reply is JSON — the whole text, else the first fenced ```json block, else the first
``{...}`` or ``[...]`` span that parses. Its recommendations are the list under ``items_key``
(default ``recommendations``; ``items`` and ``results`` are accepted too), or the reply itself when
it is a list. Each entry is an object naming its item by ``item_id`` (or ``id``) or by ``title``
(or ``name``), or a bare string (an id or a title). Every other key of an entry is a claim about
that item (``price``, ``rating``, ``distance_km``, ``cuisine``, ``hours``...), except the
explanation fields in ``NON_CLAIM_FIELDS`` (``reason``, ``why``...). Anything else is free text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

NON_CLAIM_FIELDS = frozenset({"reason", "reasons", "why", "explanation", "description", "summary", "rank",
                              "score", "note", "notes", "comment", "highlights", "pitch"})
ID_FIELDS = ("item_id", "id")
TITLE_FIELDS = ("title", "name")
LIST_KEYS = ("recommendations", "items", "results")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Mention:
    """One recommended item as the reply names it, with its claims (attribute -> claimed value)."""

    item_id: str | None
    title: str | None
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.item_id or self.title or "?"


@dataclass(frozen=True)
class ParsedReply:
    structured: bool
    mentions: list[Mention]
    problem: str | None = None  # why a JSON reply's recommendations could not be read


def load_json(text: str) -> Any:
    """The reply's JSON value (see the module docstring), or raise ValueError."""
    stripped = text.strip()
    candidates = [stripped]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for opener, closer in (("{", "}"), ("[", "]")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            candidates.append(text[start:end + 1])
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
    raise ValueError("no JSON value found")


def _mention(entry: Any) -> Mention | None:
    if isinstance(entry, str) and entry.strip():
        return Mention(item_id=entry.strip(), title=entry.strip())
    if not isinstance(entry, dict):
        return None
    item_id = next((str(entry[k]).strip() for k in ID_FIELDS if isinstance(entry.get(k), str | int)
                    and str(entry[k]).strip()), None)
    title = next((entry[k].strip() for k in TITLE_FIELDS if isinstance(entry.get(k), str) and entry[k].strip()), None)
    if item_id is None and title is None:
        return None
    claims = {k: v for k, v in entry.items() if k not in ID_FIELDS and k not in TITLE_FIELDS
              and k.casefold() not in NON_CLAIM_FIELDS}
    return Mention(item_id=item_id, title=title, claims=claims)


def parse_reply(text: str, items_key: str = "recommendations") -> ParsedReply:
    try:
        value = load_json(text)
    except ValueError:
        return ParsedReply(structured=False, mentions=[])
    entries: Any = value
    if isinstance(value, dict):
        key = next((k for k in (items_key, *LIST_KEYS) if k in value), None)
        if key is None:
            return ParsedReply(structured=True, mentions=[],
                               problem=f"the JSON reply has no {items_key!r} list of recommendations")
        entries = value[key]
    if not isinstance(entries, list):
        return ParsedReply(structured=True, mentions=[], problem="the recommendations are not a list")
    mentions = [m for m in map(_mention, entries) if m is not None]
    unreadable = len(entries) - len(mentions)
    problem = f"{unreadable} recommendation(s) name no item (no item_id or title)" if unreadable else None
    return ParsedReply(structured=True, mentions=mentions, problem=problem)

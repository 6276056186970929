"""The LLM options: claim extraction from free-text replies, and a relevance judge.

The LLM only *reads*: for factual consistency it lists the claims a free-text reply makes, and the
same deterministic rules (services.rec_rm.factual) check them against the catalog; for relevance it
rates each item 0–10 for the request. Both run at temperature 0. A backend failure is the
dimension's ``timeout`` (the call timed out) or ``error`` (anything else); output that cannot be
parsed is ``error`` — never a silent 0.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.llm.types import ChatBackend, LLMBackendError
from services.rec_rm.hybrid import DimensionResult
from services.rec_rm.items import Item, item_text
from services.rec_rm.reply import Mention, load_json

EXTRACT_SYSTEM = ("You extract factual claims from a recommendation reply. Answer with JSON only: a list of "
                  "objects {\"item\": <the item's name or id as written>, \"attribute\": <one of the attribute "
                  "names given>, \"value\": <the claimed value>}. List every recommended item; an item with no "
                  "claim appears once with attribute null.")
RELEVANCE_SYSTEM = ("You rate how well an item matches a user's request. Answer with one line: "
                    "'Score: N' where N is an integer from 0 (irrelevant) to 10 (exactly what was asked).")
_SCORE = re.compile(r"score\s*[:=]\s*(10|[0-9])\b", re.IGNORECASE)


def _failure(exc: LLMBackendError) -> DimensionResult:
    return DimensionResult("timeout" if exc.kind == "timeout" else "error", None, {"reason": f"LLM: {exc}"})


def parse_claims(text: str) -> list[Mention]:
    """The extractor's JSON list as mentions (claims of one item merged); ValueError when unreadable."""
    value = load_json(text)
    if not isinstance(value, list):
        raise ValueError("the extractor did not answer a JSON list")
    merged: dict[str, dict[str, Any]] = {}
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), str | int):
            raise ValueError("an extracted claim has no item")
        name = str(entry["item"]).strip()
        claims = merged.setdefault(name, {})
        attribute = entry.get("attribute")
        if isinstance(attribute, str) and attribute.strip():
            claims[attribute.strip()] = entry.get("value")
    return [Mention(item_id=name, title=name, claims=claims) for name, claims in merged.items()]


async def extract_claims(backend: ChatBackend, response: str, attributes: list[str]) -> list[Mention] | DimensionResult:
    prompt = f"Attribute names: {', '.join(attributes) or '(none)'}\n\nReply:\n{response}"
    try:
        result = await backend.chat([{"role": "system", "content": EXTRACT_SYSTEM},
                                     {"role": "user", "content": prompt}], temperature=0, max_tokens=1024)
    except LLMBackendError as exc:
        return _failure(exc)
    try:
        return parse_claims(result.text)
    except ValueError as exc:
        return DimensionResult("error", None, {"reason": f"claim extractor output unparseable: {exc}",
                                               "output": result.text[:500]})


def parse_rating(text: str) -> float:
    """'Score: N' (0–10) as N / 10; ValueError when absent."""
    match = _SCORE.search(text)
    if match is None:
        raise ValueError("no 'Score: N' line")
    return int(match.group(1)) / 10


async def judge_relevance(backend: ChatBackend, query: str, items: list[Item]) -> DimensionResult:
    """mean over items of rating / 10."""
    per_item: dict[str, float] = {}
    for item in items:
        prompt = f"Request: {query}\n\nItem: {item_text(item)}"
        try:
            result = await backend.chat([{"role": "system", "content": RELEVANCE_SYSTEM},
                                         {"role": "user", "content": prompt}], temperature=0, max_tokens=32)
        except LLMBackendError as exc:
            return _failure(exc)
        try:
            per_item[item.item_id] = parse_rating(result.text)
        except ValueError as exc:
            return DimensionResult("error", None, {"reason": f"relevance judge output unparseable: {exc}",
                                                   "output": result.text[:300], "item_id": item.item_id})
    return DimensionResult("ok", sum(per_item.values()) / len(per_item), {"judge": "llm", "items": per_item})

"""Evaluating RecRM on labelled records: accuracy per dimension, confusion matrices, hybrid agreement.

Records (this project's schema — RecRM-Bench's own record layout is not published in a form we could
read offline, so this is ours, documented in docs/rec_rm.md), one JSON object per line::

    {"id": "r1", "dimension": "factual", "user": {"id": "u7", "history": [...]}, "query": "...",
     "context": {"items": [{"item_id", "title", "attributes"}]}, "response": "...", "label": 1}

``dimension`` is one of instruction, factual, relevance, behaviour, or ``overall`` (a label for the
whole reply, compared with the hybrid reward). ``label`` is 1/0 (true/false: the reply is good on
that dimension). A record's prediction is ``score >= threshold`` (default 0.5). A record the scorer
could not decide (status not ok) counts as a miss in ``accuracy`` and is left out of
``accuracy_decided``; the confusion matrix counts it under ``undecided``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from services.rec_rm.hybrid import DIMENSIONS
from services.rec_rm.items import Item
from services.rec_rm.scoring import Request, Scored

RECORD_DIMENSIONS = (*DIMENSIONS, "overall")


@dataclass(frozen=True)
class LabelledRecord:
    request: Request
    dimension: str
    label: int


def parse_record(row: Any, index: int) -> LabelledRecord:
    """One record; ValueError naming the record and field for anything unreadable."""
    where = f"record {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    record_id = str(row.get("id", index))
    dimension = row.get("dimension")
    if dimension not in RECORD_DIMENSIONS:
        raise ValueError(f"{where} ({record_id}): dimension: expected one of {', '.join(RECORD_DIMENSIONS)}")
    label = row.get("label")
    if isinstance(label, bool):
        label = int(label)
    if label not in (0, 1):
        raise ValueError(f"{where} ({record_id}): label: expected 0/1 or true/false")
    if not isinstance(row.get("response"), str):
        raise ValueError(f"{where} ({record_id}): response: expected a string")
    user = row.get("user") or {}
    if not isinstance(user, dict):
        raise ValueError(f"{where} ({record_id}): user: expected an object {{id, history}}")
    items = []
    for position, item in enumerate((row.get("context") or {}).get("items") or []):
        if not isinstance(item, dict) or not item.get("item_id") or not item.get("title"):
            raise ValueError(f"{where} ({record_id}): context.items[{position}]: needs item_id and title")
        items.append(Item(str(item["item_id"]), str(item["title"]), dict(item.get("attributes") or {})))
    return LabelledRecord(Request(id=record_id, query=str(row.get("query") or ""), response=row["response"],
                                  user_id=str(user["id"]) if user.get("id") is not None else None,
                                  context_items=items), dimension, int(label))


def _score_of(scored: Scored, dimension: str) -> tuple[str, float | None]:
    if dimension == "overall":
        return scored.hybrid.status, scored.hybrid.score
    result = scored.dimensions.get(dimension)
    return (result.status, result.score) if result is not None else ("error", None)


def report(records: list[LabelledRecord], scored: dict[str, Scored], threshold: float = 0.5) -> dict[str, Any]:
    """Per dimension: n, accuracy (undecided = miss), accuracy_decided, confusion {tp, fp, tn, fn, undecided}."""
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "undecided": 0})
    for record in records:
        status, score = _score_of(scored[record.request.id], record.dimension)
        cell = confusion[record.dimension]
        if status != "ok" or score is None:
            cell["undecided"] += 1
            continue
        predicted = score >= threshold
        cell[("t" if predicted == bool(record.label) else "f") + ("p" if predicted else "n")] += 1
    out: dict[str, Any] = {"threshold": threshold, "n": len(records), "dimensions": {}}
    for dimension in RECORD_DIMENSIONS:
        if dimension not in confusion:
            continue
        cell = confusion[dimension]
        n = sum(cell.values())
        decided = n - cell["undecided"]
        correct = cell["tp"] + cell["tn"]
        entry = {"n": n, "decided": decided, "accuracy": correct / n if n else None,
                 "accuracy_decided": correct / decided if decided else None, "confusion": dict(cell)}
        if dimension == "overall":
            out["hybrid_agreement"] = entry["accuracy"]
        out["dimensions"][dimension] = entry
    return out

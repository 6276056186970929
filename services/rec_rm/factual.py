"""Factual consistency: every claim a reply makes about an item, checked against the catalog.

score = 1 when every checked claim agrees, else 0 (``all_or_nothing``, the default: a reply with one
false claim is not factually consistent); or, with ``all_or_nothing`` off, the share
(claims that agree) / (claims checked). Over the items the reply recommends; a recommended item that
is not in the catalog (nor in the item's own context) is *hallucinated* and makes the score 0. Choices the spec leaves open, kept here and in docs/rec_rm.md:

* A claim is checked only when the item has that attribute; a claim about an attribute the item
  lacks is *unverifiable*: listed in the evidence, not counted either way.
* Numbers (price, rating, distance...): the first number in the claim (``"$12.50"``, ``"4.5 stars"``)
  agrees when ``|claimed - actual| <= max(abs_tol, rel_tol * |actual|)``; the tolerances are per
  attribute in the configuration (default ``abs_tol`` 0.05, ``rel_tol`` 0.05).
* Strings (cuisine, hours...): equal after case-folding and collapsing white space, with spaces
  around dashes dropped and en/em dashes read as ``-`` (``"11:00 – 22:00"`` = ``"11:00-22:00"``).
  A list attribute (``cuisine: ["thai", "vegan"]``) agrees with a claim that names members of it.
* Booleans agree with ``true/false/yes/no``.
* Items found but no claim checked: score 1.0 (nothing false was said), with ``checked: 0`` in the
  evidence. A reply that names no item at all is ``invalid_input`` (nothing to check).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from services.rec_rm.items import Item, title_key
from services.rec_rm.reply import Mention

_NUMBER = re.compile(r"[+-]?(?:\d+(?:[.,]\d+)?|\.\d+)")
DEFAULT_ABS_TOL = 0.05
DEFAULT_REL_TOL = 0.05


@dataclass(frozen=True)
class Tolerance:
    abs_tol: float = DEFAULT_ABS_TOL
    rel_tol: float = DEFAULT_REL_TOL


@dataclass
class FactualOutcome:
    status: str
    score: float | None
    evidence: dict[str, Any] = field(default_factory=dict)


def first_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = _NUMBER.search(value)
        if match:
            return float(match.group(0).replace(",", "."))
    return None


def normalise_text(value: Any) -> str:
    text = " ".join(str(value).casefold().split())
    text = re.sub(r"\s*[-–—]\s*", "-", text)
    return text


_TRUE, _FALSE = {"true", "yes", "y", "1"}, {"false", "no", "n", "0"}


def claim_agrees(claimed: Any, actual: Any, tolerance: Tolerance = Tolerance()) -> bool:
    """Whether one claimed value agrees with the catalog's value (the rules in the module docstring)."""
    if isinstance(actual, bool):
        text = normalise_text(claimed)
        return (text in _TRUE) if actual else (text in _FALSE)
    if isinstance(actual, int | float):
        number = first_number(claimed)
        if number is None:
            return False
        return abs(number - float(actual)) <= max(tolerance.abs_tol, tolerance.rel_tol * abs(float(actual)))
    if isinstance(actual, list):
        members = {normalise_text(v) for v in actual}
        named = claimed if isinstance(claimed, list) else [claimed]
        return bool(named) and all(normalise_text(v) in members for v in named)
    if isinstance(claimed, list):
        return len(claimed) == 1 and normalise_text(claimed[0]) == normalise_text(actual)
    return normalise_text(claimed) == normalise_text(actual)


def resolve(mention: Mention, by_id: dict[str, Item], by_title: dict[str, Item]) -> Item | None:
    """The catalog item a mention names: by id first, then by (case-folded) title."""
    if mention.item_id is not None and mention.item_id in by_id:
        return by_id[mention.item_id]
    for name in (mention.title, mention.item_id):
        if name is not None and title_key(name) in by_title:
            return by_title[title_key(name)]
    return None


def check_claims(mentions: list[Mention], by_id: dict[str, Item], by_title: dict[str, Item],
                 tolerances: dict[str, Tolerance] | None = None,
                 default: Tolerance = Tolerance(), all_or_nothing: bool = False) -> FactualOutcome:
    if not mentions:
        return FactualOutcome("invalid_input", None, {"reason": "the reply names no item to check"})
    tolerances = tolerances or {}
    hallucinated: list[str] = []
    checks: list[dict[str, Any]] = []
    unverifiable: list[dict[str, Any]] = []
    for mention in mentions:
        item = resolve(mention, by_id, by_title)
        if item is None:
            hallucinated.append(mention.label)
            continue
        for attribute, claimed in mention.claims.items():
            if attribute not in item.attributes:
                unverifiable.append({"item_id": item.item_id, "attribute": attribute})
                continue
            actual = item.attributes[attribute]
            agrees = claim_agrees(claimed, actual, tolerances.get(attribute, default))
            checks.append({"item_id": item.item_id, "attribute": attribute, "claimed": claimed, "actual": actual,
                           "agrees": agrees})
    evidence: dict[str, Any] = {"checked": len(checks), "agreed": sum(c["agrees"] for c in checks),
                                "hallucinated": hallucinated, "wrong": [c for c in checks if not c["agrees"]],
                                "unverifiable": unverifiable}
    if hallucinated:
        evidence["reason"] = f"not in the catalog: {', '.join(hallucinated)}"
        return FactualOutcome("ok", 0.0, evidence)
    share = evidence["agreed"] / len(checks) if checks else 1.0
    evidence["share_agreed"] = share
    score = float(share == 1.0) if all_or_nothing else share
    return FactualOutcome("ok", score, evidence)

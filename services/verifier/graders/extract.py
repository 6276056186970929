"""Answer extraction shared by several graders: the last \\boxed{...}, numbers, fenced JSON."""

from __future__ import annotations

import json
import re
from typing import Any

from rewardhub.boxed import all_boxed, last_boxed

__all__ = ["all_boxed", "json_candidates", "last_boxed", "parse_json_lenient"]

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def json_candidates(text: str) -> list[str]:
    """Where JSON may sit: the whole text, fenced blocks (last first), then the outermost {...} / [...]."""
    candidates = [text.strip()]
    candidates += [m.strip() for m in reversed(_FENCE.findall(text))]
    for opener, closer in (("{", "}"), ("[", "]")):
        first, last = text.find(opener), text.rfind(closer)
        if 0 <= first < last:
            candidates.append(text[first:last + 1])
    return candidates


def parse_json_lenient(text: str) -> tuple[Any, bool]:
    """(value, found): the first candidate that parses as JSON."""
    for candidate in json_candidates(text):
        try:
            return json.loads(candidate), True
        except (json.JSONDecodeError, ValueError):
            continue
    return None, False

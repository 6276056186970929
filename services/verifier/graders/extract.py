"""Answer extraction shared by several graders: the last \\boxed{...}, numbers, fenced JSON."""

from __future__ import annotations

import json
import re
from typing import Any

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[start:i - 1].strip()
    return None


def all_boxed(text: str) -> list[str]:
    """Contents of every top-level ``\\boxed{...}`` with balanced braces, in order (a box nested in
    another is part of its content, an unclosed one is skipped)."""
    contents: list[str] = []
    position = 0
    while (opener := _BOXED.search(text, position)) is not None:
        depth, i = 1, opener.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth:
            position = opener.end()
            continue
        contents.append(text[opener.end():i - 1].strip())
        position = i
    return contents


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

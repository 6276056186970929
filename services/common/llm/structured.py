"""Structured output from LLM text: find the JSON, repair what is safe to repair, validate it.

Models wrap JSON in prose and code fences, leave trailing commas, or write Python-style dicts with
single quotes. :func:`parse_structured` tries, for each JSON candidate from the last to the first:

1. strict ``json.loads``;
2. a conservative repair: the candidate is read as a Python literal (which accepts single quotes
   and trailing commas) after mapping the JSON names ``true``/``false``/``null``. Only literals are
   evaluated (``ast.literal_eval``), never code, and nothing is invented: a truncated or ambiguous
   candidate stays a failure.

The first candidate that validates against the pydantic model wins. Every attempt is counted
(Prometheus ``rewardhub_llm_parse_total{schema,outcome}`` and :func:`parse_stats`), so a caller
can report a parse rate instead of silently scoring garbage.
"""

from __future__ import annotations

import ast
import io
import json
import re
import threading
import tokenize
from collections import Counter as _Tally
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Counter
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

LLM_PARSE = Counter("rewardhub_llm_parse_total", "Structured-output parses of LLM text by outcome",
                    ["schema", "outcome"])

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_JSON_NAMES = {"true": "True", "false": "False", "null": "None"}

_stats_lock = threading.Lock()
_stats: dict[str, _Tally[str]] = {}


def _record(schema: str, outcome: str) -> None:
    LLM_PARSE.labels(schema, outcome).inc()
    with _stats_lock:
        _stats.setdefault(schema, _Tally())[outcome] += 1


def parse_stats() -> dict[str, dict[str, int]]:
    """In-process tallies per schema: ``{"Diagnosis": {"ok": 3, "repaired": 1, "failed": 2}}``."""
    with _stats_lock:
        return {schema: dict(tally) for schema, tally in _stats.items()}


def reset_parse_stats() -> None:
    with _stats_lock:
        _stats.clear()


# Total characters the bracket matcher may scan per text: many unclosed brackets would otherwise make the
# search quadratic in the output length.
SCAN_BUDGET_CHARS = 2_000_000


def _balanced_spans(text: str) -> list[str]:
    """Top-level ``{...}`` and ``[...]`` spans, matched with awareness of quoted strings."""
    spans: list[str] = []
    i, n = 0, len(text)
    budget = SCAN_BUDGET_CHARS
    while i < n and budget > 0:
        if text[i] not in "{[":
            i += 1
            continue
        end = _match_close(text, i)
        budget -= (end if end is not None else n) - i
        if end is None:
            i += 1
            continue
        spans.append(text[i:end + 1])
        i = end + 1
    return spans


def _match_close(text: str, start: int) -> int | None:
    """Index of the bracket closing ``text[start]``; None when unbalanced (e.g. truncated output)."""
    pairs = {"{": "}", "[": "]"}
    stack = [pairs[text[start]]]
    quote: str | None = None
    i = start + 1
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            # A lone apostrophe in prose inside braces is rare in model JSON; quotes are tracked so that
            # braces inside strings do not end the span early.
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if ch != stack[-1]:
                return None
            stack.pop()
            if not stack:
                return i
        i += 1
    return None


def extract_json_candidates(text: str) -> list[str]:
    """JSON-looking pieces of ``text`` in order of appearance: fenced blocks first, then bare spans."""
    candidates: list[str] = []
    for match in _FENCE.finditer(text):
        body = match.group(2).strip()
        spans = _balanced_spans(body)
        candidates.extend(spans or [body])
    outside = _FENCE.sub(" ", text)
    candidates.extend(_balanced_spans(outside))
    seen: set[str] = set()
    unique = []
    for cand in candidates:
        if cand and cand not in seen:
            seen.add(cand)
            unique.append(cand)
    return unique


def _python_literal_source(candidate: str) -> str:
    """Rewrite JSON names to Python ones outside strings (``true`` → ``True``) using the tokenizer."""
    tokens = []
    for tok in tokenize.generate_tokens(io.StringIO(candidate).readline):
        if tok.type == tokenize.NAME and tok.string in _JSON_NAMES:
            tok = tok._replace(string=_JSON_NAMES[tok.string])
        tokens.append(tok)
    return tokenize.untokenize(tokens)


def loads_lenient(candidate: str) -> tuple[Any, bool]:
    """``(value, repaired)`` for one candidate; raises ``ValueError`` when it cannot be read safely.

    Strict JSON first; then the candidate as a Python literal (single quotes, trailing commas).
    """
    try:
        return json.loads(candidate), False
    except json.JSONDecodeError:
        pass
    try:
        value = ast.literal_eval(_python_literal_source(candidate))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, tokenize.TokenError) as exc:
        raise ValueError(f"not JSON and not a safe literal: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, dict | list):
        raise ValueError("repaired value is not an object or array")
    # Round-trip through JSON so only JSON types (no tuples, sets, bytes) reach validation.
    try:
        return json.loads(json.dumps(value)), True
    except (TypeError, ValueError) as exc:
        raise ValueError(f"repaired value is not JSON-representable: {exc}") from exc


@dataclass(frozen=True)
class ParseOutcome(Generic[T]):
    """The validated value, or ``None`` with the reason; ``repaired`` says a repair was needed."""

    value: T | None
    error: str | None = None
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.value is not None


def parse_structured(text: str | None, model: type[T], *, schema_name: str | None = None) -> ParseOutcome[T]:
    """Parse ``text`` into ``model``; the last valid candidate wins (a final answer follows drafts)."""
    name = schema_name or model.__name__
    if not text or not text.strip():
        _record(name, "failed")
        return ParseOutcome(None, "empty output")
    candidates = extract_json_candidates(text)
    if not candidates:
        _record(name, "failed")
        return ParseOutcome(None, "no JSON object found in the output")
    last_error = ""
    for candidate in reversed(candidates):
        try:
            data, repaired = loads_lenient(candidate)
        except ValueError as exc:
            last_error = str(exc)
            continue
        try:
            value = model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
            last_error = f"{loc}: {first.get('msg', 'invalid')}"
            continue
        _record(name, "repaired" if repaired else "ok")
        return ParseOutcome(value, None, repaired)
    _record(name, "failed")
    return ParseOutcome(None, f"no candidate validates as {name}: {last_error}")

"""Answer equivalence for voting and agreement: exact match, else math-verify either way.

Answers here are already-extracted final answers (the inside of ``\\boxed{}``), so they are
wrapped in ``$…$`` before math-verify parses them (bare LaTeX such as ``\\frac12`` is not found
otherwise). math-verify's own timeouts use SIGALRM, which works only in the main thread; the
service runs handlers in worker threads, so inputs that could make sympy run unbounded (power
towers, huge exponents or factorials, very long strings) are compared as strings only.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from math_verify import parse, verify

MAX_MATH_CHARS = 300
_WORDS = re.compile(r"^[A-Za-z][A-Za-z ,.'\-]*$")
_NESTED_POWER = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\w+\s*\^|\^\s*\([^()]*\^")
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\(?\s*-?\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!")
_DOLLARS = re.compile(r"^\$+|\$+$")


def normalise(answer: str) -> str:
    """The string form compared exactly: outer ``$`` and all whitespace removed."""
    return "".join(_DOLLARS.sub("", answer.strip()).split())


def _is_words(answer: str) -> bool:
    # math-verify reads "Paris" as the product P·a·r·i·s; multi-letter words are text, compared as text.
    stripped = answer.strip()
    return len(stripped.replace(" ", "")) > 1 and bool(_WORDS.match(stripped))


def math_safe(answer: str) -> bool:
    """True when math-verify may parse ``answer`` without risking an unbounded sympy evaluation."""
    return (len(answer) <= MAX_MATH_CHARS and not _NESTED_POWER.search(answer)
            and not _BIG_EXPONENT.search(answer) and not _BIG_FACTORIAL.search(answer))


def _timeout() -> int | None:
    return 3 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=20_000)
def parsed(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of an answer (empty when it is text, unsafe or unparseable)."""
    if _is_words(answer) or not math_safe(answer):
        return ()
    body = _DOLLARS.sub("", answer.strip())
    try:
        return tuple(parse(f"${body}$", parsing_timeout=_timeout()))
    except Exception:  # math-verify raises on malformed LaTeX it cannot recover from
        return ()


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """a ≡ b: both present and equal as normalised strings (case-insensitively for words), or
    math-verify finds them equal in either direction (it is not symmetric for every input)."""
    if a is None or b is None:
        return False
    if normalise(a) == normalise(b):
        return True
    if _is_words(a) or _is_words(b):
        return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()
    pa, pb = parsed(a), parsed(b)
    if not pa or not pb:
        return False
    try:
        timeout = _timeout()
        return bool(verify(list(pa), list(pb), timeout_seconds=timeout)
                    or verify(list(pb), list(pa), timeout_seconds=timeout))
    except Exception:
        return False


def cluster_answers(answers: list[str | None]) -> list[list[int]]:
    """Group rollout indices by equivalent answers; unparseable (None/blank) answers join none.

    Clusters come out largest first, ties broken by the earliest first member, so ``[0]`` is
    the majority cluster of the spec (ties go to the earliest cluster). Identical strings are
    bucketed first (no parsing); then each bucket joins the first earlier cluster whose
    representative (first member) it is equivalent to.
    """
    buckets: dict[str, list[int]] = {}
    for index, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        buckets.setdefault(normalise(answer), []).append(index)
    clusters: list[list[int]] = []
    for members in buckets.values():
        for cluster in clusters:
            if answers_equivalent(answers[cluster[0]], answers[members[0]]):
                cluster.extend(members)
                break
        else:
            clusters.append(list(members))
    for cluster in clusters:
        cluster.sort()
    return sorted(clusters, key=lambda members: (-len(members), members[0]))

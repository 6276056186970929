"""The ``\\boxed{…}`` convention of math answers, read one way everywhere.

The verifier's graders, the trainer's RLAVR answer extraction and DiningBench's output cleaning all
take an answer from the last box whose braces balance. Pure text processing with no dependencies, in
the lowest layer, so that services and the training library share it.
"""

from __future__ import annotations

import re

BOX_OPENERS = re.compile(r"\\(?:boxed|fbox)\s*\{")
BOXED_ONLY = re.compile(r"\\boxed\s*\{")


def _closing(text: str, start: int) -> int | None:
    """The index just past the brace that closes the one opened before ``start``; None if it never closes."""
    depth = 1
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return position + 1
    return None


def last_boxed(text: str, *, fbox: bool = True) -> str | None:
    """The stripped content of the last ``\\boxed{…}`` (or ``\\fbox{…}``, unless ``fbox=False``) whose
    braces balance; None when there is none. A box left open is passed over for the one before it."""
    openers = (BOX_OPENERS if fbox else BOXED_ONLY).finditer(text)
    for opener in reversed(list(openers)):
        end = _closing(text, opener.end())
        if end is not None:
            return text[opener.end():end - 1].strip()
    return None


def all_boxed(text: str) -> list[str]:
    """The stripped contents of every top-level ``\\boxed{…}``/``\\fbox{…}`` whose braces balance, in
    order: a box nested in another is part of its content; one left open is skipped."""
    contents: list[str] = []
    position = 0
    while (opener := BOX_OPENERS.search(text, position)) is not None:
        end = _closing(text, opener.end())
        if end is None:
            position = opener.end()
            continue
        contents.append(text[opener.end():end - 1].strip())
        position = end
    return contents

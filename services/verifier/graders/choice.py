"""Multiple choice: extract the chosen option letter and compare it with the gold letter."""

from __future__ import annotations

import re
from typing import Any

from rewardhub.reward_specs import MultipleChoiceSpec
from services.verifier.graders.extract import last_boxed
from services.verifier.graders.result import GradeResult, invalid_input, ok


def _patterns(letters: str) -> list[re.Pattern[str]]:
    cls = f"[{letters}{letters.lower()}]"
    return [
        re.compile(rf"(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*\(?\**({cls})\b\)?", re.IGNORECASE),
        re.compile(rf"^\s*\(?({cls})[).:]?\s*$", re.MULTILINE),
        re.compile(rf"\(({cls})\)"),
        # A bare capital letter standing alone ("I pick B"); capitals only, since "a" is an article.
        re.compile(rf"\b([{letters}])\b"),
    ]


def extract_choice(text: str, options: list[str]) -> str | None:
    letters = "".join(options)
    boxed = last_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\text\{([^}]*)\}", r"\1", boxed).strip(" ().")
        if inner.upper() in options:
            return inner.upper()
    for pattern in _patterns(letters):
        matches = pattern.findall(text)
        if matches:
            return str(matches[-1]).upper()
    return None


def grade_choice(spec: MultipleChoiceSpec, completion: str, ground_truth: Any) -> GradeResult:
    gold = str(ground_truth).strip().strip("()").upper() if ground_truth is not None else ""
    if gold not in spec.options:
        return invalid_input(f"ground_truth must be one of the options {spec.options}", ground_truth=str(ground_truth)[:50])
    chosen = extract_choice(completion, spec.options)
    if chosen is None:
        return GradeResult(score=0.0, details={"extracted": None, "reason": "no option letter found"})
    return ok(1.0 if chosen == gold else 0.0, extracted=chosen, gold=gold)

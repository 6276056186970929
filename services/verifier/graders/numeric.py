"""Numeric answers with absolute/relative tolerance; thousands separators, percentages, units, fractions."""

from __future__ import annotations

import math
import re
from typing import Any

from rewardhub.reward_specs import NumericSpec
from services.verifier.graders.extract import last_boxed
from services.verifier.graders.result import GradeResult, invalid_input, ok

_NUMBER = re.compile(
    r"""(?<![\w.])
        (?P<sign>[-−+]?)\s*
        (?:\\\$|\$)?\s*
        (?:
          \\d?frac\{(?P<fn>[-\d.,\s]+)\}\{(?P<fd>[-\d.,\s]+)\}
        | (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
          (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
          (?P<exp>[eE][-+]?\d+)?
        )
        \s*(?P<pct>\\?%)?""",
    re.VERBOSE,
)


def _value(match: re.Match[str], percent_as_fraction: bool) -> float:
    if match.group("fn") is not None:
        value = float(match.group("fn").replace(",", "")) / float(match.group("fd").replace(",", ""))
    else:
        value = float(match.group("num").replace(",", "") + (match.group("exp") or ""))
        if match.group("den"):
            value /= float(match.group("den"))
    if match.group("sign") in ("-", "−"):
        value = -value
    if match.group("pct") and percent_as_fraction:
        value /= 100
    return value


def numbers_in(text: str, percent_as_fraction: bool = False) -> list[float]:
    out = []
    for match in _NUMBER.finditer(text):
        try:
            out.append(_value(match, percent_as_fraction))
        except (ValueError, ZeroDivisionError):
            continue
    return out


def extract_number(text: str, mode: str, percent_as_fraction: bool = False) -> float | None:
    boxed = last_boxed(text)
    if mode in ("boxed", "boxed_or_last") and boxed is not None:
        found = numbers_in(boxed, percent_as_fraction)
        if found:
            return found[0]
        if mode == "boxed":
            return None
    if mode == "boxed":
        return None
    found = numbers_in(text, percent_as_fraction)
    if not found:
        return None
    return found[0] if mode == "first" else found[-1]


def gold_number(ground_truth: Any, percent_as_fraction: bool) -> float | None:
    if isinstance(ground_truth, bool):
        return None
    if isinstance(ground_truth, int | float):
        return float(ground_truth) if math.isfinite(ground_truth) else None
    found = numbers_in(str(ground_truth), percent_as_fraction)
    return found[0] if len(found) == 1 else None


def grade_numeric(spec: NumericSpec, completion: str, ground_truth: Any) -> GradeResult:
    gold = gold_number(ground_truth, spec.percent_as_fraction)
    if gold is None:
        return invalid_input("ground_truth is not a single number", ground_truth=str(ground_truth)[:200])
    predicted = extract_number(completion, spec.extract, spec.percent_as_fraction)
    if predicted is None:
        return GradeResult(score=0.0, details={"extracted": None, "reason": "no number found"})
    close = math.isclose(predicted, gold, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)
    return ok(1.0 if close else 0.0, extracted=predicted, gold=gold)

"""Numeric answers with absolute/relative tolerance; thousands separators, percentages, units, fractions."""

from __future__ import annotations

import math
import re
from typing import Any

from rewardhub.reward_specs import NumericSpec
from services.verifier.graders.extract import last_boxed
from services.verifier.graders.result import GradeResult, invalid_input, ok

# A sign binds only when written against the number (or its currency symbol): in "5 - 3" the minus is
# an operator, and reading "-3" there would score a completion that never states -3.  A number right
# after "^" is an exponent ("25 m^2"), not an answer.  A thousands group must end the digits
# ("1,2345" is 1 and 2345, not 1234).  "3 \times 10^{8}" and "10^{-3}" are scientific notation.
_NUMBER = re.compile(
    r"""(?<![\w.^])(?<!\^\{)
        (?P<sign>[-−+]?)
        (?:(?:\\\$|\$)\s*)?
        (?:
          \\[dt]?frac\{(?P<fn>[-−\d.,\s]+)\}\{(?P<fd>[-−\d.,\s]+)\}
        | 10\s*\^\s*\{?\s*(?P<ten_pow>[-−+]?\d+)\s*\}?
        | (?P<num>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
          (?:
             \s*/\s*(?P<den>\d+(?:\.\d+)?)
           | (?P<exp>[eE][-+]?\d+)
           | \s*(?:\\times|\\cdot|×|·)\s*10\s*\^\s*\{?\s*(?P<pow>[-−+]?\d+)\s*\}?
          )?
        )
        (?:\s*(?P<pct>\\?%)|\s+(?P<pct_word>percent|per\s+cent)\b)?""",
    re.VERBOSE,
)


def _plain(digits: str) -> str:
    """Digits as float() reads them: no thousands commas, an ASCII minus."""
    return digits.replace(",", "").replace("−", "-").strip()


def _value(match: re.Match[str], percent_as_fraction: bool) -> float:
    if match.group("fn") is not None:
        value = float(_plain(match.group("fn"))) / float(_plain(match.group("fd")))
    elif match.group("ten_pow") is not None:
        value = float("1e" + _plain(match.group("ten_pow")))
    else:
        exponent = match.group("exp") or ("e" + _plain(match.group("pow")) if match.group("pow") else "")
        value = float(_plain(match.group("num")) + exponent)
        if match.group("den"):
            value /= float(match.group("den"))
    if match.group("sign") in ("-", "−"):
        value = -value
    if (match.group("pct") or match.group("pct_word")) and percent_as_fraction:
        value /= 100
    return value


def numbers_in(text: str, percent_as_fraction: bool = False) -> list[float]:
    """Every finite number in ``text``, in order of appearance."""
    out = []
    for match in _NUMBER.finditer(text):
        try:
            value = _value(match, percent_as_fraction)
        except (ValueError, ZeroDivisionError):
            continue
        if math.isfinite(value):  # "1e999" overflows to inf, which would be "close" to any other inf
            out.append(value)
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
        try:
            value = float(ground_truth)
        except OverflowError:  # an int beyond float range (JSON allows 10**400)
            return None
        return value if math.isfinite(value) else None
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

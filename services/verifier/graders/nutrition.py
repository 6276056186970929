"""DiningBench nutrition estimates as a graded reward from per-nutrient relative error.

The missing-value rules beside DiningBench's metrics (trainer/dining/metrics.py, docs/dining_bench.md):
keys are read in English (any case) or with the authors' Chinese names (卡路里, 蛋白质, 碳水化合物,
脂肪); a nutrient the completion lacks earns no credit whatever the bounds (the metric counts it as
error |gt|, i.e. 100 %, which a ``zero_credit_rel_error`` above 1 would still pay for); a gold 0 uses a
tiny denominator (exactly 0 earns full credit, anything else none) where MAPE skips the record.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rewardhub.reward_specs import NutritionSpec
from services.verifier.graders.extract import parse_json_lenient
from services.verifier.graders.result import GradeResult, invalid_input

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ALIASES = {"卡路里": "calories", "蛋白质": "protein", "碳水化合物": "carbohydrates", "脂肪": "fat"}


def _keyed(values: dict[Any, Any]) -> dict[str, Any]:
    """Keys stripped and lower-cased, the authors' Chinese names mapped to the English ones."""
    return {_ALIASES.get(str(k).strip(), str(k).strip().lower()): v for k, v in values.items()}


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = _NUMBER.search(value.replace(",", ""))
        return float(match.group(0)) if match else None
    return None


def credit(relative_error: float, full: float, zero: float) -> float:
    """1 at or under ``full``, 0 at or over ``zero``, linear in between."""
    if relative_error <= full:
        return 1.0
    if relative_error >= zero:
        return 0.0
    return (zero - relative_error) / (zero - full)


def relative_error(predicted: float | None, gold: float) -> float:
    if predicted is None:
        return math.inf  # a missing value earns no credit
    return abs(predicted - gold) / max(abs(gold), 1e-9)


def grade_nutrition(spec: NutritionSpec, completion: str, ground_truth: Any) -> GradeResult:
    if not isinstance(ground_truth, dict):
        return invalid_input("ground_truth must be an object of nutrient values")
    keyed_truth = _keyed(ground_truth)
    gold = {n: _as_float(keyed_truth.get(n)) for n in spec.nutrients}
    missing_gold = [n for n, v in gold.items() if v is None]
    if missing_gold:
        return invalid_input(f"ground_truth lacks numeric values for: {', '.join(missing_gold)}")
    parsed, found = parse_json_lenient(completion)
    if not found or not isinstance(parsed, dict):
        return GradeResult(score=0.0, details={"reason": "no JSON object of nutrients in the completion"})
    lowered = _keyed(parsed)
    sub_scores: dict[str, float] = {}
    errors: dict[str, float | None] = {}
    for nutrient in spec.nutrients:
        err = relative_error(_as_float(lowered.get(nutrient)), gold[nutrient] or 0.0)
        errors[nutrient] = None if math.isinf(err) else round(err, 6)
        sub_scores[nutrient] = credit(err, spec.full_credit_rel_error, spec.zero_credit_rel_error)
    return GradeResult(score=sum(sub_scores.values()) / len(sub_scores), sub_scores=sub_scores,
                       details={"relative_error": errors})

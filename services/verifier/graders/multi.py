"""Weighted sum of named sub-graders with gates: a sub-score under its gate zeroes the reward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rewardhub.reward_specs import MultiSpec, RewardSpec
from services.verifier.graders.result import GradeResult

Grade = Callable[[RewardSpec, str, Any], GradeResult]
# The weakest status first: one sub-grader that cannot decide means the sum cannot be trusted.
_WEAKEST_FIRST = ["error", "timeout", "invalid_input"]


def ground_truth_for(name: str, ground_truth: Any) -> Any:
    """A dict keyed by sub-grader name routes a different reference to each; anything else is shared."""
    if isinstance(ground_truth, dict) and name in ground_truth:
        return ground_truth[name]
    return ground_truth


def grade_multi(spec: MultiSpec, completion: str, ground_truth: Any, grade: Grade) -> GradeResult:
    return combine(spec, {name: grade(sub, completion, ground_truth_for(name, ground_truth))
                          for name, sub in spec.graders.items()})


def combine(spec: MultiSpec, results: dict[str, GradeResult]) -> GradeResult:
    """score = Σ w_i s_i (/ Σ w_i when normalised), or 0 if some s_g < gate_g; not ok if any part is not ok."""
    undecided = {n: r for n, r in results.items() if r.status != "ok"}
    sub_scores = {n: r.score for n, r in results.items() if r.status == "ok"}
    details: dict[str, Any] = {n: r.details for n, r in results.items()}
    if undecided:
        status = min((r.status for r in undecided.values()), key=_WEAKEST_FIRST.index)
        return GradeResult(score=0.0, status=status, sub_scores=sub_scores,
                           details={"undecided": sorted(undecided), **details})
    failed_gates = [n for n, minimum in spec.gates.items() if sub_scores[n] < minimum]
    if failed_gates:
        return GradeResult(score=0.0, sub_scores=sub_scores, details={"failed_gates": failed_gates, **details})
    weights = {n: spec.weights.get(n, 1.0) for n in spec.graders}
    total = sum(weights[n] * sub_scores[n] for n in spec.graders)
    if spec.normalise:
        denominator = sum(weights.values())
        total = total / denominator if denominator else 0.0
    return GradeResult(score=total, sub_scores=sub_scores, details=details)

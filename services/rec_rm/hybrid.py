"""The hybrid reward: a weighted sum of the four dimensions with hard gates.

Given each dimension's (status, score) and the project's weights w_d and gates g_d:

1. Vetoes first. A dimension that decided (status ``ok``) with s_d < g_d vetoes the reward; so does a
   hallucinated item when ``veto_hallucinated`` (factual consistency found an item the catalog does
   not hold). A vetoed reward is status ``ok``, score 0.0, with every reason — the veto is a decision,
   even when some other dimension could not be scored.
2. Else, a dimension with w_d > 0 that did not decide makes the reward undecided: the weakest of their
   statuses (error < timeout < invalid_input), no score, and the dimensions named.
3. Else score = Σ_d w_d s_d / Σ_d w_d over the dimensions with w_d > 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIMENSIONS = ("instruction", "factual", "relevance", "behaviour")
_WEAKEST_FIRST = ("error", "timeout", "invalid_input")


@dataclass
class DimensionResult:
    status: str
    score: float | None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class HybridResult:
    status: str
    score: float | None
    vetoed_by: list[str] = field(default_factory=list)
    reason: str | None = None


def combine(results: dict[str, DimensionResult], weights: dict[str, float], gates: dict[str, float],
            veto_hallucinated: bool = True) -> HybridResult:
    vetoes: list[str] = []
    reasons: list[str] = []
    for name, minimum in gates.items():
        result = results.get(name)
        if result is not None and result.status == "ok" and result.score is not None and result.score < minimum:
            vetoes.append(name)
            reasons.append(f"{name} {result.score:.3g} is under its gate {minimum:g}")
    factual = results.get("factual")
    hallucinated = factual.evidence.get("hallucinated") if factual is not None and factual.status == "ok" else None
    if veto_hallucinated and hallucinated:
        if "factual" not in vetoes:
            vetoes.append("factual")
        reasons.append(f"hallucinated item(s): {', '.join(map(str, hallucinated))}")
    if vetoes:
        return HybridResult(status="ok", score=0.0, vetoed_by=vetoes, reason="; ".join(reasons))
    weighted = {name: w for name, w in weights.items() if w > 0}
    missing = [name for name in weighted if name not in results]
    undecided = [name for name in weighted if name in results and results[name].status != "ok"]
    if missing or undecided:
        statuses = [results[name].status for name in undecided] or ["error"]
        status = min(statuses, key=lambda s: _WEAKEST_FIRST.index(s) if s in _WEAKEST_FIRST else 0)
        parts = [f"{name}: {results[name].status} ({results[name].evidence.get('reason', 'no reason')})"
                 for name in undecided] + [f"{name}: not scored" for name in missing]
        return HybridResult(status=status, score=None, reason="undecided: " + "; ".join(parts))
    if not weighted:
        return HybridResult(status="invalid_input", score=None, reason="weights: every weight is 0")
    total = sum(weighted.values())
    score = sum(w * float(results[name].score or 0.0) for name, w in weighted.items()) / total
    return HybridResult(status="ok", score=score)

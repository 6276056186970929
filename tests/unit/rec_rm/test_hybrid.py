"""The gated hybrid reward against hand-computed values."""

from __future__ import annotations

import pytest

from services.rec_rm.hybrid import DimensionResult, combine


def ok(score: float, **evidence: object) -> DimensionResult:
    return DimensionResult("ok", score, dict(evidence))


def test_weighted_sum() -> None:
    results = {"instruction": ok(1.0), "factual": ok(0.5), "relevance": ok(0.8), "behaviour": ok(0.2)}
    weights = {"instruction": 2.0, "factual": 1.0, "relevance": 1.0, "behaviour": 0.0}
    # (2 * 1.0 + 1 * 0.5 + 1 * 0.8) / (2 + 1 + 1) = 3.3 / 4 = 0.825; behaviour weighs 0 and is left out.
    hybrid = combine(results, weights, gates={})
    assert hybrid.status == "ok" and hybrid.score == pytest.approx(0.825)


def test_a_failed_gate_vetoes_with_the_reason() -> None:
    results = {"instruction": ok(0.5), "factual": ok(1.0)}
    hybrid = combine(results, {"instruction": 1, "factual": 1}, gates={"instruction": 1.0})
    assert (hybrid.status, hybrid.score, hybrid.vetoed_by) == ("ok", 0.0, ["instruction"])
    assert "instruction 0.5 is under its gate 1" in (hybrid.reason or "")


def test_a_hallucinated_item_vetoes_even_when_another_dimension_is_undecided() -> None:
    results = {"factual": ok(0.0, hallucinated=["ghost"]),
               "behaviour": DimensionResult("invalid_input", None, {"reason": "no model"})}
    hybrid = combine(results, {"factual": 1, "behaviour": 1}, gates={})
    assert (hybrid.status, hybrid.score, hybrid.vetoed_by) == ("ok", 0.0, ["factual"])
    assert "ghost" in (hybrid.reason or "")
    off = combine(results, {"factual": 1, "behaviour": 1}, gates={}, veto_hallucinated=False)
    assert off.status == "invalid_input" and off.score is None


def test_undecided_takes_the_weakest_status_and_never_a_silent_zero() -> None:
    results = {"instruction": ok(1.0), "relevance": DimensionResult("timeout", None, {"reason": "slow"}),
               "behaviour": DimensionResult("error", None, {"reason": "boom"})}
    hybrid = combine(results, {"instruction": 1, "relevance": 1, "behaviour": 1}, gates={"instruction": 1})
    assert (hybrid.status, hybrid.score) == ("error", None)
    assert "relevance: timeout (slow)" in (hybrid.reason or "") and "behaviour: error (boom)" in (hybrid.reason or "")
    assert combine({}, {"instruction": 0}, {}).status == "invalid_input"

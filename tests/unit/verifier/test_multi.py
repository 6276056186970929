"""The multi grader's algebra: weights (and their default), gates, normalisation and statuses.

Expected scores are written by hand from the sub-scores; the property tests check invariants that
hold whatever the formula's implementation (a weight of 1 is the default, order does not matter,
scaling every weight leaves a normalised score alone, a failed gate means 0).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import MultiSpec, RewardSpec
from services.verifier.graders.multi import combine
from services.verifier.graders.registry import grade
from services.verifier.graders.result import GradeResult, GradeStatus
from tests.conftest import Tenant, bearer

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def multi(names: list[str], **fields: Any) -> MultiSpec:
    spec = SPECS.validate_python({"type": "multi", "graders": {n: {"type": "exact"} for n in names}, **fields})
    assert isinstance(spec, MultiSpec)
    return spec


def scored(**scores: float) -> dict[str, GradeResult]:
    return {name: GradeResult(score=value) for name, value in scores.items()}


# --- weights -------------------------------------------------------------------------------------


def test_a_name_without_a_weight_weighs_one_beside_explicit_weights() -> None:
    spec = multi(["a", "b"], weights={"a": 3})
    assert combine(spec, scored(a=1.0, b=0.0)).score == pytest.approx(0.75)  # 3·1 / (3 + 1)
    assert combine(spec, scored(a=0.0, b=1.0)).score == pytest.approx(0.25)  # 1·1 / (3 + 1)


def test_unnormalised_sum_uses_the_default_weight_too() -> None:
    spec = multi(["a", "b", "c"], weights={"a": 2, "b": 0.5}, normalise=False)
    assert combine(spec, scored(a=1.0, b=1.0, c=1.0)).score == pytest.approx(3.5)  # 2 + 0.5 + 1
    assert combine(spec, scored(a=0.0, b=0.0, c=0.5)).score == pytest.approx(0.5)


def test_all_weights_zero_normalise_to_zero_not_a_division_error() -> None:
    spec = multi(["a", "b"], weights={"a": 0, "b": 0})
    assert combine(spec, scored(a=1.0, b=1.0)).score == 0.0


def test_weights_naming_an_unknown_grader_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        SPECS.validate_python({"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"b": 2}})
    [error] = caught.value.errors()
    assert error["loc"] == ("multi", "weights")
    assert "weights names unknown graders: b" in error["msg"]


def test_gates_naming_an_unknown_grader_are_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        SPECS.validate_python({"type": "multi", "graders": {"a": {"type": "exact"}}, "gates": {"z": 1}})
    [error] = caught.value.errors()
    assert error["loc"] == ("multi", "gates")
    assert "gates names unknown graders: z" in error["msg"]


def test_the_verifier_answers_422_naming_spec_weights(sqlite_tenant: Tenant) -> None:
    from services.verifier.app import create_app

    body = {"spec": {"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"a": 1, "typo": 2}},
            "items": [{"id": "1", "completion": "x", "ground_truth": "x"}]}
    with TestClient(create_app()) as client:
        response = client.post("/v1/grade", json=body, headers=bearer(sqlite_tenant.keys["trainer"]))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "spec.multi.weights", error
    assert "unknown graders: typo" in error["message"], error


# --- gates ---------------------------------------------------------------------------------------


def test_a_gate_is_a_minimum_the_sub_score_may_equal() -> None:
    spec = multi(["fmt", "ans"], gates={"fmt": 0.5})
    assert combine(spec, scored(fmt=0.5, ans=1.0)).score == pytest.approx(0.75)
    below = combine(spec, scored(fmt=0.49, ans=1.0))
    assert below.score == 0.0 and below.details["failed_gates"] == ["fmt"]
    assert below.sub_scores == {"fmt": 0.49, "ans": 1.0}


def test_gates_zero_an_unnormalised_sum_as_well() -> None:
    spec = multi(["fmt", "ans"], weights={"fmt": 2, "ans": 3}, gates={"ans": 1}, normalise=False)
    assert combine(spec, scored(fmt=1.0, ans=1.0)).score == pytest.approx(5.0)
    gated = combine(spec, scored(fmt=1.0, ans=0.9))
    assert gated.score == 0.0 and gated.status == "ok" and gated.details["failed_gates"] == ["ans"]


def test_through_real_sub_graders() -> None:
    spec = {"type": "multi", "normalise": False, "weights": {"answer": 2},
            "graders": {"answer": {"type": "numeric"}, "format": {"type": "regex", "pattern": r"\\boxed\{"}},
            "gates": {"format": 1}}
    assert grade(SPECS.validate_python(spec), r"\boxed{-3}", "-3").score == pytest.approx(3.0)  # 2·1 + 1·1
    assert grade(SPECS.validate_python(spec), r"\boxed{3}", "-3").score == pytest.approx(1.0)  # 2·0 + 1·1
    assert grade(SPECS.validate_python(spec), "-3", "-3").score == 0.0  # the format gate


# --- statuses ------------------------------------------------------------------------------------


def undecided(status: GradeStatus) -> GradeResult:
    return GradeResult(score=0.0, status=status, details={"reason": status})


@pytest.mark.parametrize(("statuses", "expected"), [
    (("ok", "invalid_input"), "invalid_input"),
    (("timeout", "invalid_input"), "timeout"),
    (("invalid_input", "timeout"), "timeout"),
    (("invalid_input", "error"), "error"),
    (("error", "timeout", "invalid_input"), "error"),
    (("timeout", "ok", "timeout"), "timeout"),
])
def test_the_weakest_undecided_status_wins(statuses: tuple[GradeStatus, ...], expected: str) -> None:
    names = [f"g{i}" for i in range(len(statuses))]
    spec = multi(names)
    results = {n: (GradeResult(score=1.0) if s == "ok" else undecided(s)) for n, s in zip(names, statuses, strict=True)}
    combined = combine(spec, results)
    assert (combined.status, combined.score) == (expected, 0.0)
    assert combined.details["undecided"] == sorted(n for n, s in zip(names, statuses, strict=True) if s != "ok")
    assert combined.sub_scores == {n: 1.0 for n, s in zip(names, statuses, strict=True) if s == "ok"}


def test_an_undecided_part_beats_a_failed_gate() -> None:
    spec = multi(["fmt", "ans"], gates={"fmt": 1})
    combined = combine(spec, {"fmt": GradeResult(score=0.0), "ans": undecided("timeout")})
    assert combined.status == "timeout" and "failed_gates" not in combined.details


# --- properties ----------------------------------------------------------------------------------

SCORES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
WEIGHTS = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)


@st.composite
def weighted_parts(draw: st.DrawFn) -> tuple[dict[str, float], dict[str, float]]:
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
    return {n: draw(SCORES) for n in names}, {n: draw(WEIGHTS) for n in names}


@given(weighted_parts())
def test_a_normalised_score_is_a_weighted_mean_within_the_sub_scores(parts: tuple[dict[str, float],
                                                                                   dict[str, float]]) -> None:
    scores, weights = parts
    combined = combine(multi(list(scores), weights=weights), scored(**scores))
    assert min(scores.values()) - 1e-9 <= combined.score <= max(scores.values()) + 1e-9
    assert combined.sub_scores == scores


@given(weighted_parts(), st.floats(min_value=0.1, max_value=10.0))
def test_scaling_every_weight_leaves_a_normalised_score_alone(parts: tuple[dict[str, float], dict[str, float]],
                                                               factor: float) -> None:
    scores, weights = parts
    once = combine(multi(list(scores), weights=weights), scored(**scores)).score
    scaled = combine(multi(list(scores), weights={n: w * factor for n, w in weights.items()}), scored(**scores)).score
    assert scaled == pytest.approx(once, abs=1e-9)


@given(weighted_parts())
def test_an_omitted_weight_is_a_weight_of_one(parts: tuple[dict[str, float], dict[str, float]]) -> None:
    scores, weights = parts
    omitted = next(iter(scores))
    explicit = {**weights, omitted: 1.0}
    implicit = {n: w for n, w in weights.items() if n != omitted}
    for normalise in (True, False):
        a = combine(multi(list(scores), weights=explicit, normalise=normalise), scored(**scores)).score
        b = combine(multi(list(scores), weights=implicit, normalise=normalise), scored(**scores)).score
        assert a == pytest.approx(b, abs=1e-9)


@given(weighted_parts())
def test_the_order_of_the_graders_does_not_matter(parts: tuple[dict[str, float], dict[str, float]]) -> None:
    scores, weights = parts
    forward = combine(multi(list(scores), weights=weights, normalise=False), scored(**scores)).score
    backward = combine(multi(list(reversed(scores)), weights=weights, normalise=False), scored(**scores)).score
    assert forward == pytest.approx(backward, abs=1e-9)


@given(weighted_parts(), st.floats(min_value=0.0, max_value=1.0), st.booleans())
def test_a_gate_zeroes_exactly_when_its_sub_score_is_below_it(parts: tuple[dict[str, float], dict[str, float]],
                                                               gate: float, normalise: bool) -> None:
    scores, weights = parts
    gated = next(iter(scores))
    combined = combine(multi(list(scores), weights=weights, gates={gated: gate}, normalise=normalise),
                       scored(**scores))
    ungated = combine(multi(list(scores), weights=weights, normalise=normalise), scored(**scores))
    if scores[gated] < gate:
        assert combined.score == 0.0 and combined.details["failed_gates"] == [gated]
    else:
        assert combined.score == ungated.score and "failed_gates" not in combined.details


@given(st.lists(st.sampled_from(["ok", "invalid_input", "timeout", "error"]), min_size=1, max_size=6))
def test_any_undecided_part_makes_the_whole_undecided(statuses: list[GradeStatus]) -> None:
    names = [f"g{i}" for i in range(len(statuses))]
    results = {n: (GradeResult(score=1.0) if s == "ok" else undecided(s)) for n, s in zip(names, statuses, strict=True)}
    combined = combine(multi(names), results)
    expected = next((s for s in ("error", "timeout", "invalid_input") if s in statuses), "ok")
    assert combined.status == expected
    assert combined.score == (1.0 if expected == "ok" else 0.0)

"""The math grader's options and per-pair status rules (conformance with math-verify itself is in
test_math_conformance.py)."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import sympy
from math_verify import LatexExtractionConfig
from math_verify import verify as real_verify
from math_verify.errors import TimeoutException
from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import MathSpec, RewardSpec
from services.verifier.graders import math as math_grader
from services.verifier.graders.extract import all_boxed
from services.verifier.graders.registry import grade
from services.verifier.graders.result import GradeResult

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def spec(**options: Any) -> MathSpec:
    parsed = SPECS.validate_python({"type": "math", **options})
    assert isinstance(parsed, MathSpec)
    return parsed


def run(completion: str, truth: Any, **options: Any) -> GradeResult:
    return grade(spec(**options), completion, truth)


# -- one pair that raises does not decide the item --------------------------------------------

@pytest.mark.parametrize(("truth", "completion", "score"), [
    ("12:00", r"\boxed{12:00}", 1.0), ("12:00", r"\boxed{11:00}", 0.0),
    ("3:00", "The clock shows $3:00$.", 1.0), ("3:00", r"\boxed{4:00}", 0.0),
    ("10:00", r"\boxed{10:00}", 1.0), ("10:00", r"\boxed{10}", 0.0),
])
def test_clock_times_are_graded(truth: str, completion: str, score: float) -> None:
    # H:00 parses as H/0 = zoo; comparing zoo with anything raises in sympy, and that pair used to
    # abort the whole comparison (status error for right and wrong answers alike).
    result = run(completion, truth)
    assert (result.status, result.score) == ("ok", score), result
    assert result.details["raised_pairs"] == 1


def test_ordinary_items_carry_no_raised_pairs() -> None:
    result = run(r"\boxed{\frac{1}{2}}", "0.5")
    assert (result.status, result.score) == ("ok", 1.0)
    assert "raised_pairs" not in result.details


def compare(gold: list[Any], prediction: list[Any], **options: Any) -> GradeResult:
    return math_grader._compare(spec(**options), gold, prediction, None)


def test_error_only_when_every_comparable_pair_raised() -> None:
    zoo = sympy.zoo
    everything_raised = compare([zoo], [zoo])
    assert (everything_raised.status, everything_raised.details["raised_pairs"]) == ("error", 1)
    assert "could not compare" in everything_raised.details["reason"]
    one_raised = compare([zoo, "12:00"], [zoo, "11:00"])
    assert (one_raised.status, one_raised.score, one_raised.details["raised_pairs"]) == ("ok", 0.0, 1)
    # a str and a sympy value are never compared (math-verify answers False without looking)
    mixed_only = compare([sympy.Integer(1)], ["1"])
    assert (mixed_only.status, mixed_only.score) == ("ok", 0.0)


def test_a_pair_that_runs_out_leaves_the_item_undecided_unless_another_verifies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []

    def slow_sympy(gold: Any, target: Any, **_: Any) -> bool:
        calls.append((gold, target))
        if not isinstance(gold, str):
            raise TimeoutException("Timeout during comparison")
        return bool(gold == target)

    monkeypatch.setattr(math_grader, "verify", slow_sympy)
    two, three = sympy.Integer(2), sympy.Integer(3)
    undecided = compare([two, three, "2"], [two, three, "3"])
    assert undecided.status == "timeout" and "exceeded" in undecided.details["reason"]
    # after the first sympy pair ran out only the (instant) string pair was tried
    assert calls == [(two, two), ("2", "3")]
    decided = compare([two, "2"], [two, "2"])
    assert (decided.status, decided.score) == ("ok", 1.0)


def test_the_first_pair_that_verifies_ends_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def spy(gold: Any, target: Any, **kwargs: Any) -> bool:
        seen.append((gold, target))
        return bool(real_verify(gold, target, **kwargs))

    monkeypatch.setattr(math_grader, "verify", spy)
    assert run(r"\boxed{\frac{1}{2}}", "0.5").score == 1.0
    assert len(seen) == 1
    assert run(r"\boxed{\frac{1}{3}}", "0.5").score == 0.0
    assert len(seen) == 3  # the sympy pair and the string pair; the two mixed pairs are skipped


# -- every extraction option does something ---------------------------------------------------

PROBES = [
    ("The answer is 7", "7"),                                                      # plain number
    (r"$\frac{3}{4}$", "0.75"),                                                    # LaTeX, no box
    (r"\boxed{5}. The final answer is $6$. I hope it is correct.", "5"),           # box vs anchor
    (r"\boxed{\frac{3}{4}}", "0.75"),                                              # boxed LaTeX
    ("so 3/4 is it", "0.75"),                                                      # plain expression
    (r"\boxed{5} and then the answer is 6", "5"),                                  # box vs plain anchor
]
SCORES_BY_EXTRACTION = {
    "latex_and_expr": [1, 1, 0, 1, 1, 1],
    "latex_only": [0, 1, 0, 1, 0, 1],
    "expr_only": [1, 0, 0, 0, 1, 0],
    "boxed_then_any": [1, 1, 1, 1, 1, 1],
}


def test_every_declared_extraction_option_is_probed() -> None:
    declared = set(typing.get_args(MathSpec.model_fields["extraction"].annotation))
    assert declared == set(SCORES_BY_EXTRACTION)
    # an option that is ignored (falls back to another) would score the probes like that other one
    vectors = [tuple(v) for v in SCORES_BY_EXTRACTION.values()]
    assert len(set(vectors)) == len(vectors)


@pytest.mark.parametrize("extraction", sorted(SCORES_BY_EXTRACTION))
def test_extraction_option(extraction: str) -> None:
    scores = []
    for completion, truth in PROBES:
        result = run(completion, truth, extraction=extraction)
        assert result.status == "ok", result
        scores.append(int(result.score))
    assert scores == SCORES_BY_EXTRACTION[extraction]


def test_boxed_then_any_reads_only_the_boxes_when_there_are_some() -> None:
    # the box is read even where boxed_match_priority turns boxes off for the other modes
    text = r"\boxed{5}. Hmm, the answer is $6$"
    assert run(text, "5", extraction="boxed_then_any", boxed_match_priority=-1).score == 1.0
    assert run(text, "5", boxed_match_priority=-1).score == 0.0
    # several boxes: math-verify's reading of them (a hedge is credited for neither answer)
    hedge = run(r"\boxed{2} wait no \boxed{3}", "3", extraction="boxed_then_any")
    assert (hedge.status, hedge.score) == ("ok", 0.0)
    assert run(r"so \boxed{\{3, 2\}}", r"\{2,3\}", extraction="boxed_then_any").score == 1.0
    # no box: any LaTeX or plain expression, as latex_and_expr
    assert run("Adding them gives 12.", "12", extraction="boxed_then_any").score == 1.0
    assert run("Adding them gives $\\sqrt{4}$.", "2", extraction="boxed_then_any").score == 1.0


def test_all_boxed() -> None:
    assert all_boxed(r"\boxed{1} then \fbox{\frac{1}{2}}") == ["1", r"\frac{1}{2}"]
    assert all_boxed(r"\boxed{\boxed{1}+1}") == [r"\boxed{1}+1"]
    assert all_boxed(r"\boxed{open \boxed{2}") == ["2"]
    assert all_boxed("no box") == []


# -- the gold's extraction --------------------------------------------------------------------

def test_default_gold_reading_is_latex_in_a_box() -> None:
    text, targets = math_grader.gold_source(spec(), "1,22")
    assert (text, targets) == (r"\boxed{1,22}", [LatexExtractionConfig()])
    assert math_grader.gold_source(spec(), r"\boxed{3}")[0] == r"\boxed{3}"


@pytest.mark.parametrize(("gold_extraction", "status", "score"), [
    ("boxed_latex", "ok", 0.0),          # LaTeX reads 1,22 as the pair 1, 22
    ("same", "ok", 1.0),                 # like the prediction: a plain expression, 1.22
    (["expr"], "ok", 1.0),
    (["latex", "expr"], "ok", 1.0),
    (["latex"], "invalid_input", 0.0),   # no LaTeX in the bare text
])
def test_gold_extraction_decimal_comma(gold_extraction: Any, status: str, score: float) -> None:
    result = run("1.22", "1,22", extraction="expr_only", gold_extraction=gold_extraction)
    assert (result.status, result.score) == (status, score), result


def test_gold_extraction_same_follows_the_prediction_mode() -> None:
    solution = r"Two steps: $1+1 = 2$, so \boxed{5} wait, the final answer is $6$. I hope it is correct."
    assert run(r"\boxed{5}", solution, gold_extraction="same", extraction="boxed_then_any").score == 1.0
    assert run(r"\boxed{6}", solution, gold_extraction="same").score == 1.0
    assert run(r"\boxed{1000}", "The total is 1,000 apples.", gold_extraction="same").score == 1.0


@pytest.mark.parametrize("bad", [[], ["expr", "expr"], ["string"], "latex", "bogus"])
def test_gold_extraction_is_validated(bad: Any) -> None:
    with pytest.raises(ValidationError):
        spec(gold_extraction=bad)


def test_gold_extraction_list_is_a_hashable_tuple() -> None:
    parsed = spec(gold_extraction=["latex", "expr"])
    assert parsed.gold_extraction == ("latex", "expr")
    hash(parsed)


# -- allow_set_relation_comp ------------------------------------------------------------------

@pytest.mark.parametrize(("truth", "completion", "default", "allowed"), [
    ("(1,2)", r"\boxed{1<x<2}", 0.0, 1.0),
    ("[1,2]", r"\boxed{1 \le x \le 2}", 0.0, 1.0),
    ("[1,2]", r"\boxed{1 < x \le 2}", 0.0, 0.0),
    ("1<x<2", r"\boxed{(1,2)}", 1.0, 1.0),   # a set prediction is compared either way
])
def test_allow_set_relation_comp(truth: str, completion: str, default: float, allowed: float) -> None:
    assert run(completion, truth).score == default
    assert run(completion, truth, allow_set_relation_comp=True).score == allowed

"""The math grader's pair-by-pair comparison and what it reports (issue 23, item 1).

Written against the mutants mutmut left alive in services/verifier/graders/math.py. Expected values
are typed in; where a test needs math-verify to misbehave (raise, recurse), ``verify`` is replaced
by a stand-in that does so, and the arguments the grader passes to it are checked by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from math_verify import parse as real_parse
from math_verify import verify as real_verify
from pydantic import TypeAdapter

from rewardhub.reward_specs import MathSpec, RewardSpec
from services.verifier.graders import math as math_grader
from services.verifier.graders.result import GradeResult

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def spec(**fields: Any) -> MathSpec:
    parsed = SPECS.validate_python({"type": "math", **fields})
    assert isinstance(parsed, MathSpec)
    return parsed


def test_a_correct_answer_reports_what_was_read() -> None:
    assert math_grader.grade_math(spec(), r"so \boxed{7}", "7") == GradeResult(
        score=1.0, details={"extracted": "7", "gold": "7"})
    assert math_grader.grade_math(spec(), r"so \boxed{8}", "7") == GradeResult(
        score=0.0, details={"extracted": "8", "gold": "7"})


def test_what_was_read_is_cut_to_200_characters() -> None:
    digits = "1" * 250
    assert math_grader.grade_math(spec(), rf"\boxed{{{digits}}}", digits) == GradeResult(
        score=1.0, details={"extracted": "1" * 200, "gold": "1" * 200})


def test_the_grader_passes_the_specs_options_to_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    def spy(gold: Any, prediction: Any, **options: Any) -> bool:
        seen.append(options)
        return bool(real_verify(gold, prediction, **options))

    monkeypatch.setattr(math_grader, "verify", spy)
    math_grader.grade_math(spec(float_rounding=3, strict=False, allow_set_relation_comp=True, timeout_s=2.5),
                           r"\boxed{2}", "2")
    assert seen[0] == {"float_rounding": 3, "strict": False, "allow_set_relation_comp": True,
                       "timeout_seconds": 3, "raise_on_error": True}  # ⌈2.5⌉ whole seconds


def raising(error: BaseException) -> Any:
    def verify(gold: Any, prediction: Any, **options: Any) -> bool:
        raise error
    return verify


def test_every_pair_raising_is_an_error_naming_the_first_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_grader, "verify", raising(ValueError("boom")))
    result = math_grader.grade_math(spec(), r"\boxed{2}", "2")
    # gold [2, "2"] × prediction [2, "2"]: the two like-with-like pairs raise
    assert result == GradeResult(score=0.0, status="error", details={
        "reason": "math-verify could not compare the answers: ValueError: boom", "raised_pairs": 2})


def test_a_recursion_error_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_grader, "verify", raising(RecursionError()))
    assert math_grader.grade_math(spec(), r"\boxed{2}", "2") == GradeResult(
        score=0.0, status="timeout", details={"reason": "the expressions are too deeply nested to compare"})


def test_one_pair_raising_and_another_unequal_is_a_wrong_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []

    def verify(gold: Any, prediction: Any, **options: Any) -> bool:
        calls.append((gold, prediction))
        if not isinstance(gold, str):
            raise ValueError("sympy could not")
        return False

    monkeypatch.setattr(math_grader, "verify", verify)
    assert math_grader.grade_math(spec(), r"\boxed{3}", "2") == GradeResult(
        score=0.0, details={"extracted": "3", "gold": "2", "raised_pairs": 1})
    assert len(calls) == 2  # the sympy pair and the string pair; the mixed pairs are never compared


def test_an_equal_pair_after_a_raising_one_counts_the_raised_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    def verify(gold: Any, prediction: Any, **options: Any) -> bool:
        if not isinstance(gold, str):
            raise ValueError("sympy could not")
        return True

    monkeypatch.setattr(math_grader, "verify", verify)
    assert math_grader.grade_math(spec(), r"\boxed{2}", "2") == GradeResult(
        score=1.0, details={"extracted": "2", "gold": "2", "raised_pairs": 1})


def test_an_empty_ground_truth_is_invalid_input() -> None:
    empty = GradeResult(score=0.0, status="invalid_input", details={"reason": "ground_truth is empty"})
    assert math_grader.grade_math(spec(), r"\boxed{1}", None) == empty
    assert math_grader.grade_math(spec(), r"\boxed{1}", "  ") == empty
    assert math_grader.grade_math(spec(), r"\boxed{1}", "") == empty


def test_parse_gets_the_timeout_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    def spy(text: str, **options: Any) -> Any:
        seen.append({k: v for k, v in options.items() if k != "extraction_config"})
        return real_parse(text, **options)

    monkeypatch.setattr(math_grader, "parse", spy)
    math_grader.grade_math(spec(timeout_s=0.5), r"\boxed{1}", "1")
    # ⌈0.5⌉ = 1 whole second, for the gold and for the answer
    assert seen == [{"parsing_timeout": 1, "raise_on_error": True}] * 2


def test_the_verify_timeout_is_at_least_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def spy(gold: Any, prediction: Any, **options: Any) -> bool:
        seen.append(options["timeout_seconds"])
        return True

    monkeypatch.setattr(math_grader, "verify", spy)
    math_grader.grade_math(spec(timeout_s=0.25), r"\boxed{1}", "1")
    assert seen == [1]


def test_a_ground_truth_that_breaks_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from math_verify.errors import TimeoutException

    def broken(text: str, **options: Any) -> Any:
        raise KeyError("parser bug")

    monkeypatch.setattr(math_grader, "parse", broken)
    truth = "9" * 250
    assert math_grader.grade_math(spec(), "x", truth) == GradeResult(score=0.0, status="invalid_input", details={
        "reason": "math-verify cannot parse the ground truth: KeyError", "ground_truth": "9" * 200})

    def slow(text: str, **options: Any) -> Any:
        raise TimeoutException()

    monkeypatch.setattr(math_grader, "parse", slow)
    assert math_grader.grade_math(spec(timeout_s=2.0), "x", "1") == GradeResult(
        score=0.0, status="timeout", details={"reason": "parsing the ground truth exceeded 2.0s"})


def test_a_long_verify_error_is_cut_to_300_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_grader, "verify", raising(ValueError("e" * 400)))
    result = math_grader.grade_math(spec(), r"\boxed{2}", "2")
    assert result.details["reason"] == ("math-verify could not compare the answers: ValueError: " + "e" * 400)[:300]


def test_several_boxes_are_read_together() -> None:
    text, _ = math_grader.answer_source(spec(extraction="boxed_then_any"), r"first \boxed{1} then \boxed{2}")
    assert text == r"\boxed{1} \boxed{2}"


def answer_parse(monkeypatch: pytest.MonkeyPatch, outcome: BaseException | list[Any]) -> None:
    """The gold parses for real; parsing the completion raises ``outcome`` or returns it."""
    calls: list[str] = []

    def parse(text: str, **options: Any) -> Any:
        calls.append(text)
        if len(calls) == 1:
            return real_parse(text, **options)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(math_grader, "parse", parse)


def test_a_gold_math_verify_reads_as_nothing_is_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_grader, "parse", lambda text, **options: [])
    truth = "q" * 250
    assert math_grader.grade_math(spec(), "x", truth) == GradeResult(score=0.0, status="invalid_input", details={
        "reason": "math-verify could not parse the ground truth", "ground_truth": "q" * 200})


def test_a_completion_that_times_out_or_recurses_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from math_verify.errors import TimeoutException

    answer_parse(monkeypatch, TimeoutException())
    assert math_grader.grade_math(spec(timeout_s=4.0), "x", "1") == GradeResult(
        score=0.0, status="timeout", details={"reason": "parsing the completion exceeded 4.0s"})
    answer_parse(monkeypatch, RecursionError())
    assert math_grader.grade_math(spec(), "x", "1") == GradeResult(
        score=0.0, status="timeout", details={"reason": "the completion is too deeply nested to parse"})


def test_an_unparseable_or_empty_completion_is_a_wrong_answer_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    answer_parse(monkeypatch, ValueError("bad latex"))
    assert math_grader.grade_math(spec(), "x", "1") == GradeResult(
        score=0.0, details={"extracted": None, "reason": "unparseable: ValueError"})
    answer_parse(monkeypatch, [])
    assert math_grader.grade_math(spec(), "x", "1") == GradeResult(
        score=0.0, details={"extracted": None, "reason": "no answer found"})

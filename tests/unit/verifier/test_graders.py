"""Each grader against hand-computed expectations, including the statuses for what it cannot decide."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import RewardSpec, parse_spec_ref
from services.verifier.graders.extract import last_boxed
from services.verifier.graders.nutrition import credit
from services.verifier.graders.registry import grade

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def run(spec: dict[str, Any], completion: str, truth: Any):
    return grade(SPECS.validate_python(spec), completion, truth)


def test_last_boxed_handles_nesting_and_picks_the_last() -> None:
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


@pytest.mark.parametrize(("completion", "truth", "score"), [
    (r"Thus $\boxed{\frac{3}{4}}$.", "0.75", 1.0),
    (r"\boxed{0.75}", r"\frac{3}{4}", 1.0),
    (r"\boxed{(1, 3]}", "(1,3]", 1.0),
    (r"\boxed{[1, 3]}", "(1,3]", 0.0),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", 1.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"The answer is 7.", "8", 0.0),
])
def test_math(completion: str, truth: str, score: float) -> None:
    result = run({"type": "math"}, completion, truth)
    assert (result.status, result.score) == ("ok", score)


def test_math_statuses() -> None:
    assert run({"type": "math"}, r"\boxed{1}", "").status == "invalid_input"
    no_answer = run({"type": "math"}, "I don't know.", "5")
    assert (no_answer.status, no_answer.score, no_answer.details["reason"]) == ("ok", 0.0, "no answer found")


@pytest.mark.parametrize(("completion", "truth", "spec", "score"), [
    ("The total is $1,234.50.", "1234.5", {}, 1.0),
    (r"\boxed{3/4}", 0.75, {}, 1.0),
    ("It rose 50%.", "0.5", {"percent_as_fraction": True}, 1.0),
    ("It rose 50%.", "50", {}, 1.0),
    ("about 101 meters", "100", {"rel_tol": 0.02}, 1.0),
    ("about 103 meters", "100", {"rel_tol": 0.02}, 0.0),
    (r"first 5 then finally \frac{1}{8}", "0.125", {}, 1.0),
    ("-3 degrees", "-3", {}, 1.0),
    ("answer: 2.5e3", "2500", {}, 1.0),
])
def test_numeric(completion: str, truth: Any, spec: dict[str, Any], score: float) -> None:
    result = run({"type": "numeric", **spec}, completion, truth)
    assert (result.status, result.score) == ("ok", score), result


def test_numeric_statuses() -> None:
    assert run({"type": "numeric"}, "5", "five").status == "invalid_input"
    assert run({"type": "numeric"}, "5", "3 or 4").status == "invalid_input"
    nothing = run({"type": "numeric"}, "no digits here", "5")
    assert (nothing.status, nothing.score) == ("ok", 0.0)


@pytest.mark.parametrize(("completion", "score"), [
    ("The answer is (B).", 1.0), (r"\boxed{B}", 1.0), ("Answer: b", 1.0), ("B", 1.0),
    ("I pick (C) because B is wrong", 0.0), ("The answer is C", 0.0),
    # A bare letter in a sentence (the last pattern used to match only the text "ABCD" itself).
    ("I pick B", 1.0), ("After thinking it over, B", 1.0), ("It must be C, not A", 0.0),
    ("a cat sat; so B", 1.0), ("ABCD", 0.0),
])
def test_multiple_choice(completion: str, score: float) -> None:
    assert run({"type": "multiple_choice"}, completion, "B").score == score


def test_multiple_choice_gold_must_be_an_option() -> None:
    assert run({"type": "multiple_choice", "options": ["A", "B"]}, "A", "E").status == "invalid_input"
    with pytest.raises(ValidationError):
        SPECS.validate_python({"type": "multiple_choice", "options": ["AB", "C"]})


def test_exact_and_regex() -> None:
    assert run({"type": "exact"}, r"\boxed{\text{Paris}}", "paris").score == 1.0
    assert run({"type": "exact", "normalisation": {"case_sensitive": True}}, "paris", "Paris").score == 0.0
    assert run({"type": "exact"}, "Lyon", ["Paris", "Lyon"]).score == 1.0
    assert run({"type": "regex", "pattern": r"\d{4}-\d{2}"}, "on 2024-05 it", None).score == 1.0
    assert run({"type": "regex", "pattern": r"\d{4}", "full_match": True}, "year 2024", None).score == 0.0
    assert run({"type": "regex"}, "abc", "a(").status == "invalid_input"
    with pytest.raises(ValidationError):
        SPECS.validate_python({"type": "regex", "pattern": "(unclosed"})


def test_instruction_constraints_are_sub_scores() -> None:
    spec = {"type": "instruction", "constraints": [
        {"kind": "word_count", "relation": "at_most", "value": 5},
        {"kind": "include_keywords", "keywords": ["reward"]},
        {"kind": "ends_with", "phrase": "Done."},
        {"kind": "all_lowercase"},
    ]}
    result = run(spec, "The reward is high. Done.", None)
    assert result.sub_scores == {"0:word_count": 1.0, "1:include_keywords": 1.0, "2:ends_with": 1.0,
                                 "3:all_lowercase": 0.0}
    assert result.score == 0.75
    assert run({**spec, "all_or_nothing": True}, "The reward is high. Done.", None).score == 0.0


def test_instruction_counts_and_constraints_from_ground_truth() -> None:
    text = "- one\n- two\n\nSecond paragraph here. Two sentences!\n\nSection 1 intro\nSection 2 end"
    truth = [{"kind": "bullet_count", "relation": "exactly", "value": 2},
             {"kind": "paragraph_count", "relation": "exactly", "value": 3},
             {"kind": "section_count", "relation": "at_least", "value": 2},
             {"kind": "forbid_keywords", "keywords": ["banana"]}]
    assert run({"type": "instruction"}, text, truth).score == 1.0
    bad = run({"type": "instruction"}, text, [{"kind": "word_count", "relation": "about", "value": 3}])
    assert bad.status == "invalid_input" and "relation" in bad.details["reason"]


def test_json_schema() -> None:
    spec = {"type": "json_schema", "schema": {"type": "object", "required": ["a"],
                                              "properties": {"a": {"type": "integer"}}}}
    assert run(spec, 'Here:\n```json\n{"a": 3}\n```', None).score == 1.0
    wrong = run(spec, '{"a": "x"}', None)
    assert wrong.score == 0.0 and "a" in wrong.details["reason"]
    assert run(spec, "not json", None).details["reason"] == "no JSON found in the completion"
    with pytest.raises(ValidationError):
        SPECS.validate_python({"type": "json_schema", "schema": {"type": "nonsense"}})


def test_tool_call() -> None:
    spec = {"type": "tool_call", "tools": [{"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}]}
    good = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert run(spec, good, None).score == 1.0
    assert run(spec, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', None).score == 0.0
    assert run(spec, '<tool_call>{"name": "launch", "arguments": {}}</tool_call>', None).score == 0.0
    assert run(spec, "<tool_call>{not json}</tool_call>", None).score == 0.0
    assert run(spec, "no call", None).details["problems"] == ["no tool call found"]
    openai_style = '[{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}]'
    assert run(spec, openai_style, None).score == 1.0
    matching = {**spec, "match_ground_truth": True}
    assert run(matching, good, {"name": "get_weather", "arguments": {"city": "Paris"}}).score == 1.0
    assert run(matching, good, {"name": "get_weather", "arguments": {"city": "Rome"}}).score == 0.0


def test_nutrition_graded_by_relative_error() -> None:
    assert credit(0.05, 0.1, 1.0) == 1.0
    assert credit(0.55, 0.1, 1.0) == pytest.approx(0.5)
    assert credit(1.5, 0.1, 1.0) == 0.0
    truth = {"calories": 500, "protein": 20, "fat": 10, "carbohydrates": 60}
    # calories 10% off -> 1; protein 55% off -> 0.5; fat missing -> 0; carbs exact -> 1
    result = run({"type": "nutrition"}, '```json\n{"calories": 550, "protein": 31, "carbohydrates": "60 g"}\n```', truth)
    assert result.sub_scores == pytest.approx({"calories": 1.0, "protein": 0.5, "fat": 0.0, "carbohydrates": 1.0})
    assert result.score == pytest.approx(0.625)
    assert run({"type": "nutrition"}, "{}", {"calories": 1}).status == "invalid_input"


def test_multi_weights_and_gates() -> None:
    spec = {"type": "multi", "graders": {
        "format": {"type": "regex", "pattern": r"\\boxed\{"},
        "answer": {"type": "math"}}, "weights": {"format": 1, "answer": 3}, "gates": {"format": 1}}
    assert run(spec, r"\boxed{4}", "4").score == 1.0
    assert run(spec, r"\boxed{5}", "4").score == pytest.approx(0.25)
    gated = run(spec, "4", "4")
    assert gated.score == 0.0 and gated.details["failed_gates"] == ["format"]
    routed = {"type": "multi", "graders": {"a": {"type": "numeric"}, "b": {"type": "exact"}}}
    assert run(routed, "7", {"a": "7", "b": "7"}).score == 1.0
    undecided = run(routed, "7", {"a": "seven", "b": "7"})
    assert undecided.status == "invalid_input" and undecided.details["undecided"] == ["a"]
    with pytest.raises(ValidationError):
        SPECS.validate_python({"type": "multi", "graders": {"a": {"type": "math"}}, "gates": {"b": 1}})


def test_spec_refs() -> None:
    assert parse_spec_ref("gsm8k@2") == ("gsm8k", 2)
    assert parse_spec_ref("gsm8k") == ("gsm8k", None)
    for bad in ("gsm8k@", "@2", "a b", "x@0", "x@v2"):
        with pytest.raises(ValueError):
            parse_spec_ref(bad)


def test_grader_bug_becomes_error_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.verifier.graders.registry as registry

    def broken(*_: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(registry, "grade_numeric", broken)
    result = run({"type": "numeric"}, "1", "1")
    assert result.status == "error" and "KeyError" in result.details["reason"]

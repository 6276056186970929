"""Whole results of the local graders, written against the mutants mutmut left alive (issue 23, item 1).

The earlier tests checked scores; most survivors changed a status, a reason or a detail. These
assert the whole ``GradeResult`` (score, status, sub-scores and details), each typed in by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from rewardhub.reward_specs import RewardSpec
from services.verifier.graders import instruction, text
from services.verifier.graders.multi import ground_truth_for
from services.verifier.graders.registry import grade
from services.verifier.graders.result import GradeResult, failed, invalid_input, ok, timed_out

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def graded(spec: dict[str, Any], completion: str, truth: Any) -> GradeResult:
    return grade(SPECS.validate_python(spec), completion, truth)


def bad(reason: str, **details: Any) -> GradeResult:
    return GradeResult(score=0.0, status="invalid_input", details={"reason": reason, **details})


# --- result helpers ------------------------------------------------------------------------------


def test_result_helpers() -> None:
    assert ok(1) == GradeResult(score=1.0, status="ok", sub_scores={}, details={})
    assert isinstance(ok(1).score, float)
    assert ok(0.5, extracted="x") == GradeResult(score=0.5, details={"extracted": "x"})
    assert invalid_input("why", field="f") == GradeResult(score=0.0, status="invalid_input",
                                                          details={"reason": "why", "field": "f"})
    assert timed_out("slow") == GradeResult(score=0.0, status="timeout", details={"reason": "slow"})
    assert failed("boom") == GradeResult(score=0.0, status="error", details={"reason": "boom"})


# --- multiple choice -----------------------------------------------------------------------------

CHOICE = {"type": "multiple_choice"}


@pytest.mark.parametrize(("completion", "truth", "expected"), [
    ("The answer is (C).", "C", GradeResult(score=1.0, details={"extracted": "C", "gold": "C"})),
    ("The answer is (C).", "(b)", GradeResult(score=0.0, details={"extracted": "C", "gold": "B"})),
    ("no letter here", "A", GradeResult(score=0.0, details={"extracted": None, "reason": "no option letter found"})),
    (r"\boxed{\text{(d)}}", "D", GradeResult(score=1.0, details={"extracted": "D", "gold": "D"})),
    (r"\boxed{ b. }", " B ", GradeResult(score=1.0, details={"extracted": "B", "gold": "B"})),
])
def test_choice_results(completion: str, truth: Any, expected: GradeResult) -> None:
    assert graded(CHOICE, completion, truth) == expected


def test_choice_gold_outside_the_options_is_invalid_input() -> None:
    assert graded(CHOICE, "A", "E") == bad("ground_truth must be one of the options ['A', 'B', 'C', 'D']",
                                           ground_truth="E")
    assert graded(CHOICE, "A", None) == bad("ground_truth must be one of the options ['A', 'B', 'C', 'D']",
                                            ground_truth="None")
    assert graded(CHOICE, "A", "Z" * 60) == bad("ground_truth must be one of the options ['A', 'B', 'C', 'D']",
                                                ground_truth="Z" * 50)


def test_choice_reads_a_lower_case_letter_on_a_line_of_its_own() -> None:
    # the second pattern (a line holding only the letter) is multi-line and takes either case
    assert graded(CHOICE, "I think\nb\nis it", "B").score == 1.0
    assert graded({"type": "multiple_choice", "options": ["A", "B", "C"]}, "Thinking...\n(c)\n", "C").score == 1.0


# --- exact and regex -----------------------------------------------------------------------------


def test_exact_results() -> None:
    assert graded({"type": "exact"}, r"\boxed{Paris}", "paris") == GradeResult(score=1.0, details={"extracted": "paris"})
    assert graded({"type": "exact"}, "x" * 250, "y") == GradeResult(score=0.0, details={"extracted": "x" * 200})
    assert graded({"type": "exact"}, "Paris", None) == bad("ground_truth is required for exact match")


def test_exact_last_line_takes_the_last_non_blank_line() -> None:
    spec = {"type": "exact", "extract": "last_line"}
    assert graded(spec, "thinking\n\nParis\n  \n", "Paris") == GradeResult(score=1.0, details={"extracted": "paris"})
    assert graded(spec, "Paris\nLyon", "Paris").score == 0.0
    assert graded(spec, " \n \n", "") == GradeResult(score=1.0, details={"extracted": ""})
    assert graded({"type": "exact", "extract": "whole"}, "thinking\nParis", "Paris").score == 0.0


@pytest.mark.parametrize(("options", "raw", "expected"), [
    ({}, r"The $\text{Big}$   Apple", "the big apple"),
    ({"strip_latex_text": False}, r"$x$", "$x$"),
    ({"case_sensitive": True}, "Big  Apple", "Big Apple"),
    ({"strip_punctuation": True}, "Hello, world! (yes)", "hello world yes"),
    ({"collapse_whitespace": False}, " a \t b ", "a \t b"),
    ({}, " a \t b\n c ", "a b c"),
])
def test_normalise(options: dict[str, Any], raw: str, expected: str) -> None:
    spec = SPECS.validate_python({"type": "exact", "normalisation": options})
    assert text.normalise(raw, spec.normalisation) == expected


def test_regex_results() -> None:
    assert graded({"type": "regex", "pattern": r"\d+"}, "Answer: 42", None) == GradeResult(
        score=1.0, details={"matched": "42"})
    assert graded({"type": "regex", "pattern": r"\d+"}, "none", None) == GradeResult(score=0.0, details={"matched": None})
    assert graded({"type": "regex", "pattern": r"a+"}, "a" * 250, None) == GradeResult(
        score=1.0, details={"matched": "a" * 200})


def test_regex_pattern_from_the_ground_truth() -> None:
    assert graded({"type": "regex"}, "Answer: 42", r"Answer: \d+") == GradeResult(
        score=1.0, details={"matched": "answer: 42"})  # normalised: case-folded
    assert graded({"type": "regex"}, "x", None) == bad("no pattern: set spec.pattern or give the pattern as ground_truth")
    assert graded({"type": "regex"}, "x", "") == bad("no pattern: set spec.pattern or give the pattern as ground_truth")
    result = graded({"type": "regex"}, "x", "(")
    assert result.status == "invalid_input"
    assert result.details["reason"].startswith("ground_truth is not a valid regular expression: ")


def test_regex_case_and_full_match() -> None:
    assert graded({"type": "regex", "pattern": "ABC"}, "xabcx", None).score == 1.0
    sensitive = {"type": "regex", "pattern": "ABC", "normalisation": {"case_sensitive": True}}
    assert graded(sensitive, "xabcx", None).score == 0.0
    assert graded(sensitive, "xABCx", None).score == 1.0
    full = {"type": "regex", "pattern": r"\d+", "full_match": True}
    assert graded(full, "42", None) == GradeResult(score=1.0, details={"matched": "42"})
    assert graded(full, "42 apples", None) == GradeResult(score=0.0, details={"matched": None})


# --- json schema ---------------------------------------------------------------------------------

OBJECT = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}, "required": ["n"]}


def test_json_schema_results() -> None:
    spec = {"type": "json_schema", "schema": OBJECT}
    assert graded(spec, 'Sure: ```json\n{"n": 3}\n```', None) == GradeResult(score=1.0)
    assert graded(spec, "no json", None) == GradeResult(score=0.0, details={"reason": "no JSON found in the completion"})
    assert graded(spec, '{"s": 1}', None) == GradeResult(score=0.0, details={
        "reason": "schema violation at (root): 'n' is a required property", "violations": 2})
    assert graded(spec, '{"n": "x", "s": 2}', None) == GradeResult(score=0.0, details={
        "reason": "schema violation at n: 'x' is not of type 'integer'", "violations": 2})


def test_json_schema_whole_mode_needs_the_whole_completion() -> None:
    spec = {"type": "json_schema", "schema": OBJECT, "extract": "whole"}
    assert graded(spec, '{"n": 1}', None) == GradeResult(score=1.0)
    assert graded(spec, 'Here: {"n": 1}', None) == GradeResult(
        score=0.0, details={"reason": "no JSON found in the completion"})


def test_json_schema_paths_join_with_slashes_and_reasons_are_cut_to_300() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": {"maxLength": 2}}}}
    assert graded({"type": "json_schema", "schema": schema}, '{"a": ["ok", "long"]}', None) == GradeResult(
        score=0.0, details={"reason": "schema violation at a/1: 'long' is too long", "violations": 1})
    long_value = "v" * 400
    result = graded({"type": "json_schema", "schema": {"type": "integer"}}, f'"{long_value}"', None)
    assert result.details["reason"] == f"schema violation at (root): '{long_value}' is not of type 'integer'"[:300]
    assert len(result.details["reason"]) == 300


# --- tool calls ----------------------------------------------------------------------------------

WEATHER = {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                             "required": ["city"]}}
TOOLS = {"type": "tool_call", "tools": [WEATHER]}


def calls_result(score: float, calls: int, problems: list[str], **sub: float) -> GradeResult:
    return GradeResult(score=score, sub_scores={"well_formed": float(not problems), **sub},
                       details={"calls": calls, "problems": problems})


def test_tool_call_results() -> None:
    tagged = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'
    assert graded(TOOLS, tagged, None) == calls_result(1.0, 1, [])
    assert graded(TOOLS, "no call", None) == calls_result(0.0, 0, ["no tool call found"])
    assert graded({**TOOLS, "require_calls": False}, "no call", None) == calls_result(1.0, 0, [])
    assert graded(TOOLS, '<tool_call>{"name": "weather", "arguments": {}}</tool_call>', None) == calls_result(
        0.0, 1, ["call 0 (weather) arguments: 'city' is a required property"])
    assert graded(TOOLS, '<tool_call>{"name": "time", "arguments": {}}</tool_call>', None) == calls_result(
        0.0, 1, ["call 0 names an undeclared tool 'time'"])
    assert graded(TOOLS, "<tool_call>{oops</tool_call>", None) == calls_result(
        0.0, 0, ["tool_call block 0 is not valid JSON: Expecting property name enclosed in double quotes"])
    assert graded(TOOLS, '<tool_call>{"name": 3}</tool_call>', None) == calls_result(
        0.0, 0, ["call 0 lacks a string name and object arguments"])


def test_tool_call_forms() -> None:
    openai = '[{"function": {"name": "weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}]'
    assert graded(TOOLS, openai, None) == calls_result(1.0, 1, [])
    parameters = '{"name": "weather", "parameters": {"city": "Oslo"}}'
    assert graded(TOOLS, parameters, None) == calls_result(1.0, 1, [])
    bad_string = '{"name": "weather", "arguments": "{not json"}'
    assert graded(TOOLS, bad_string, None) == calls_result(0.0, 0, ["call 0 lacks a string name and object arguments"])
    no_arguments = '{"name": "weather"}'  # arguments default to {}: the schema then wants a city
    assert graded(TOOLS, no_arguments, None) == calls_result(
        0.0, 1, ["call 0 (weather) arguments: 'city' is a required property"])
    assert graded(TOOLS, '["x"]', None) == calls_result(0.0, 0, ["call 0 lacks a string name and object arguments"])
    assert graded(TOOLS, '{"function": "weather", "name": "weather", "arguments": {"city": "A"}}', None) == \
        calls_result(1.0, 1, [])  # a "function" that is not an object is not a wrapper


def test_tool_call_problems_are_cut_to_ten_and_200_characters() -> None:
    many = "".join(f'<tool_call>{{"name": "t{i}", "arguments": {{}}}}</tool_call>' for i in range(12))
    result = graded(TOOLS, many, None)
    assert result.details["calls"] == 12
    assert result.details["problems"] == [f"call {i} names an undeclared tool 't{i}'" for i in range(10)]
    long_enum = {"name": "pick", "parameters": {"type": "object", "properties": {"x": {"enum": ["a" * 300]}}}}
    result = graded({"type": "tool_call", "tools": [long_enum]}, '{"name": "pick", "arguments": {"x": "b"}}', None)
    [problem] = result.details["problems"]
    assert len(problem) == 200 and problem.startswith("call 0 (pick) arguments: 'b' is not one of ['aaa")


def test_tool_call_against_the_ground_truth() -> None:
    spec = {**TOOLS, "match_ground_truth": True}
    call = {"name": "weather", "arguments": {"city": "Oslo"}}
    completion = '{"name": "weather", "arguments": {"city": "Oslo"}}'
    assert graded(spec, completion, call) == calls_result(1.0, 1, [], matches_ground_truth=1.0)
    assert graded(spec, completion, [call]) == calls_result(1.0, 1, [], matches_ground_truth=1.0)
    other = {"name": "weather", "arguments": {"city": "Rome"}}
    assert graded(spec, completion, other) == calls_result(0.0, 1, [], matches_ground_truth=0.0)
    assert graded(spec, completion, [call, other]) == calls_result(0.0, 1, [], matches_ground_truth=0.0)
    assert graded(spec, completion, {"name": 1}) == bad(
        "ground_truth must be a call or list of calls with name and arguments")
    wrapped = {"function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    assert graded(spec, completion, wrapped) == calls_result(1.0, 1, [], matches_ground_truth=1.0)
    # well-formed 0 and a match: the score is still 0
    assert graded(spec, '{"name": "weather", "arguments": {}}', {"name": "weather", "arguments": {}}) == \
        calls_result(0.0, 1, ["call 0 (weather) arguments: 'city' is a required property"], matches_ground_truth=1.0)


# --- nutrition -----------------------------------------------------------------------------------

NUTRITION = {"type": "nutrition", "nutrients": ["calories", "protein"]}
GOLD = {"calories": 500, "protein": "20 g"}


def test_nutrition_results() -> None:
    # calories 550: error 0.1 → full credit; protein 25: error 0.25 → (1 − 0.25) / (1 − 0.1) = 0.8333…
    result = graded(NUTRITION, '{"Calories": 550, "protein": "25g"}', GOLD)
    assert result.status == "ok"
    assert result.sub_scores == {"calories": 1.0, "protein": pytest.approx(0.75 / 0.9)}
    assert result.score == pytest.approx((1.0 + 0.75 / 0.9) / 2)
    assert result.details == {"relative_error": {"calories": 0.1, "protein": 0.25}}


def test_nutrition_missing_and_unreadable_values_earn_nothing() -> None:
    result = graded(NUTRITION, '{"calories": "lots", "protein": true}', GOLD)
    assert result == GradeResult(score=0.0, sub_scores={"calories": 0.0, "protein": 0.0},
                                 details={"relative_error": {"calories": None, "protein": None}})
    result = graded(NUTRITION, '{"calories": 1000}', GOLD)  # error 1.0: at zero credit exactly
    assert result == GradeResult(score=0.0, sub_scores={"calories": 0.0, "protein": 0.0},
                                 details={"relative_error": {"calories": 1.0, "protein": None}})


def test_nutrition_reads_commas_and_negative_numbers() -> None:
    result = graded({"type": "nutrition", "nutrients": ["calories"]}, '{"calories": "1,100 kcal"}', {"calories": 1000})
    assert result.details == {"relative_error": {"calories": 0.1}} and result.score == 1.0
    result = graded({"type": "nutrition", "nutrients": ["fat"]}, '{"fat": -2}', {"fat": 2})
    assert result.details == {"relative_error": {"fat": 2.0}} and result.score == 0.0


def test_nutrition_a_zero_gold_uses_a_tiny_denominator() -> None:
    result = graded({"type": "nutrition", "nutrients": ["fat"]}, '{"fat": 0}', {"fat": 0})
    assert result == GradeResult(score=1.0, sub_scores={"fat": 1.0}, details={"relative_error": {"fat": 0.0}})
    result = graded({"type": "nutrition", "nutrients": ["fat"]}, '{"fat": 0.5}', {"fat": 0})
    assert result.details == {"relative_error": {"fat": 500000000.0}} and result.score == 0.0


def test_nutrition_bad_input() -> None:
    assert graded(NUTRITION, "{}", [1]) == bad("ground_truth must be an object of nutrient values")
    assert graded(NUTRITION, "{}", {"calories": 1, "protein": "none"}) == bad(
        "ground_truth lacks numeric values for: protein")
    assert graded(NUTRITION, "{}", {"calories": float("nan"), "protein": False}) == bad(
        "ground_truth lacks numeric values for: calories, protein")
    assert graded(NUTRITION, "{}", {"calories": [1], "protein": 2}) == bad(
        "ground_truth lacks numeric values for: calories")
    assert graded(NUTRITION, "none at all", GOLD) == GradeResult(
        score=0.0, details={"reason": "no JSON object of nutrients in the completion"})
    assert graded(NUTRITION, "[500, 20]", GOLD) == GradeResult(
        score=0.0, details={"reason": "no JSON object of nutrients in the completion"})


def test_nutrition_credit_is_linear_between_the_bounds() -> None:
    spec = {"type": "nutrition", "nutrients": ["calories"], "full_credit_rel_error": 0.2, "zero_credit_rel_error": 0.6}
    # error 0.3: (0.6 − 0.3) / (0.6 − 0.2) = 0.75; error 0.2: full; error 0.6: none
    assert graded(spec, '{"calories": 130}', {"calories": 100}).score == pytest.approx(0.75)
    assert graded(spec, '{"calories": 120}', {"calories": 100}).score == 1.0
    assert graded(spec, '{"calories": 40}', {"calories": 100}).score == 0.0


# --- instruction ---------------------------------------------------------------------------------


def constraint(**fields: Any) -> Any:
    spec = SPECS.validate_python({"type": "instruction", "constraints": [fields]})
    return spec.constraints[0]


@pytest.mark.parametrize(("kind", "body", "expected"), [
    ("sentence_count", "One. Two! Three?", 3),
    ("sentence_count", "no end mark", 1),  # text without an end mark is one sentence
    ("sentence_count", "   ", 0),
    ("word_count", "It's a well-known fact", 4),
    ("paragraph_count", "a\n\n  \n\nb\n \nc", 3),
    ("bullet_count", "- a\n* b\n1. c\n2) d\nno", 4),
    ("section_count", "Section 1\n## section 2\nSECTION x\nsections 4", 3),
])
def test_counts(kind: str, body: str, expected: int) -> None:
    assert instruction.count(kind, body) == expected


def test_count_rejects_an_unknown_kind_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^lines$"):
        instruction.count("lines", "x")


def test_a_custom_section_marker() -> None:
    c = constraint(kind="section_count", relation="exactly", value=2, section_marker="Part")
    assert instruction.check(c, "Part 1\ntext\nPART 2\nSection 3")
    assert not instruction.check(c, "Section 1\nSection 2")


def test_keywords_case_folding() -> None:
    loose = constraint(kind="include_keywords", keywords=["Apple"])
    assert instruction.check(loose, "an APPLE a day")
    strict = constraint(kind="include_keywords", keywords=["Apple"], case_sensitive=True)
    assert not instruction.check(strict, "an APPLE a day")
    assert instruction.check(strict, "an Apple a day")
    strict_lower = constraint(kind="include_keywords", keywords=["apple"], case_sensitive=True)
    assert not instruction.check(strict_lower, "an Apple a day")
    forbid = constraint(kind="forbid_keywords", keywords=["pear", "plum"])
    assert instruction.check(forbid, "an apple")
    assert not instruction.check(forbid, "a Plum")


def test_phrases() -> None:
    starts = constraint(kind="starts_with", phrase="Dear")
    ends = constraint(kind="ends_with", phrase="Bye.")
    assert instruction.check(starts, "  Dear all. Bye.  ")
    assert not instruction.check(starts, "Hi, Dear")
    assert instruction.check(ends, "  Dear all. Bye.  ")
    assert not instruction.check(ends, "Bye. Dear")


@pytest.mark.parametrize(("kind", "body", "expected"), [
    ("json_format", '{"a": 1}', True),
    ("json_format", '```json\n{"a": 1}\n```', True),
    ("json_format", '```\n[1, 2]\n```', True),
    ("json_format", 'Here: {"a": 1}', False),
    ("json_format", "```JSON\n{}\n```", False),  # only a lower-case json tag is stripped
    ("all_lowercase", "all lower 1", True),
    ("all_lowercase", "Not lower", False),
    ("all_uppercase", "ALL UPPER 1", True),
    ("all_uppercase", "NOT uPPER", False),
    ("no_commas", "no commas here", True),
    ("no_commas", "one, two", False),
])
def test_formats(kind: str, body: str, expected: bool) -> None:
    assert instruction.check(constraint(kind=kind), body) is expected


def test_instruction_results() -> None:
    spec = {"type": "instruction", "constraints": [{"kind": "no_commas"}, {"kind": "all_lowercase"}]}
    assert graded(spec, "hello there", None) == GradeResult(
        score=1.0, sub_scores={"0:no_commas": 1.0, "1:all_lowercase": 1.0}, details={"passed": 2, "total": 2})
    assert graded(spec, "Hello, there", None) == GradeResult(
        score=0.0, sub_scores={"0:no_commas": 0.0, "1:all_lowercase": 0.0}, details={"passed": 0, "total": 2})
    assert graded(spec, "Hello there", None) == GradeResult(
        score=0.5, sub_scores={"0:no_commas": 1.0, "1:all_lowercase": 0.0}, details={"passed": 1, "total": 2})
    strict = {**spec, "all_or_nothing": True}
    assert graded(strict, "Hello there", None).score == 0.0
    assert graded(strict, "hello there", None).score == 1.0


def test_instruction_constraints_from_the_ground_truth() -> None:
    truth = [{"kind": "word_count", "relation": "at_most", "value": 2}]
    assert graded({"type": "instruction"}, "two words", truth) == GradeResult(
        score=1.0, sub_scores={"0:word_count": 1.0}, details={"passed": 1, "total": 1})
    assert graded({"type": "instruction"}, "x", None) == bad("no constraints: give them in the spec or as ground_truth")
    assert graded({"type": "instruction"}, "x", []) == bad("no constraints: give them in the spec or as ground_truth")
    malformed = graded({"type": "instruction"}, "x", [{"kind": "word_count", "relation": "about", "value": 2}])
    assert malformed.status == "invalid_input"
    assert malformed.details["reason"].startswith("ground_truth constraints are malformed at 0.word_count.relation: ")


# --- multi: routing ground truth -----------------------------------------------------------------


def test_ground_truth_for() -> None:
    assert ground_truth_for("a", {"a": 1, "b": 2}) == 1
    assert ground_truth_for("c", {"a": 1}) == {"a": 1}  # a dict without the name is shared whole
    assert ground_truth_for("a", "shared") == "shared"
    assert ground_truth_for("a", None) is None


# --- registry ------------------------------------------------------------------------------------


def test_remote_specs_are_not_graded_in_the_pool() -> None:
    assert graded({"type": "rubric", "rubric": "Be polite."}, "hi", None) == GradeResult(
        score=0.0, status="error", details={"reason": "rubric specs are judged by the rubric_rm service, "
                                                      "not in the grader pool"})
    assert graded({"type": "code"}, "print(1)", "assert True") == GradeResult(
        score=0.0, status="error", details={"reason": "code specs are run by the sandbox service, "
                                                      "not in the grader pool"})


def test_a_spec_of_no_known_type_is_an_error_naming_it() -> None:
    assert grade(object(), "x", None) == GradeResult(  # type: ignore[arg-type]
        score=0.0, status="error", details={"reason": "TypeError: no grader for spec type object"})


def test_a_grader_that_raises_is_an_error_and_recursion_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.verifier.graders import registry

    def boom(spec: Any, completion: str, ground_truth: Any) -> GradeResult:
        raise KeyError("x" * 400)

    monkeypatch.setattr(registry, "grade_exact", boom)
    result = graded({"type": "exact"}, "a", "a")
    assert result.status == "error" and result.score == 0.0
    assert result.details == {"reason": ("KeyError: '" + "x" * 400)[:300]}

    def deep(spec: Any, completion: str, ground_truth: Any) -> GradeResult:
        raise RecursionError

    monkeypatch.setattr(registry, "grade_exact", deep)
    assert graded({"type": "exact"}, "a", "a") == GradeResult(score=0.0, status="timeout",
                                                               details={"reason": "input too deeply nested"})


@pytest.mark.parametrize(("spec", "completion", "truth", "score"), [
    ({"type": "math"}, r"\boxed{4}", "4", 1.0),
    ({"type": "numeric"}, "4", "4", 1.0),
    ({"type": "multiple_choice"}, "(B)", "B", 1.0),
    ({"type": "exact"}, "yes", "yes", 1.0),
    ({"type": "regex", "pattern": "y.s"}, "yes", None, 1.0),
    ({"type": "instruction", "constraints": [{"kind": "no_commas"}]}, "yes", None, 1.0),
    ({"type": "json_schema", "schema": {"type": "integer"}}, "4", None, 1.0),
    ({"type": "tool_call", "tools": [{"name": "t"}]}, '{"name": "t", "arguments": {}}', None, 1.0),
    ({"type": "nutrition", "nutrients": ["fat"]}, '{"fat": 4}', {"fat": 4}, 1.0),
    ({"type": "multi", "graders": {"a": {"type": "exact"}}}, "yes", "yes", 1.0),
])
def test_every_local_spec_type_reaches_its_grader(spec: dict[str, Any], completion: str, truth: Any,
                                                  score: float) -> None:
    result = graded(spec, completion, truth)
    assert (result.status, result.score) == ("ok", score)


# --- second round: survivors of the first re-run ------------------------------------------------


def test_a_text_wrapped_box_wins_over_an_earlier_letter() -> None:
    assert graded(CHOICE, r"The answer is (A). \boxed{\text{C}}", "C") == GradeResult(
        score=1.0, details={"extracted": "C", "gold": "C"})


def test_the_letter_x_is_an_option_like_any_other() -> None:
    spec = {"type": "multiple_choice", "options": ["W", "X", "Y"]}
    assert graded(spec, r"The answer is (W). \boxed{X}", "X") == GradeResult(
        score=1.0, details={"extracted": "X", "gold": "X"})
    assert graded(CHOICE, "The answer is x", "A") == GradeResult(
        score=0.0, details={"extracted": None, "reason": "no option letter found"})


def test_last_line_of_three() -> None:
    assert graded({"type": "exact", "extract": "last_line"}, "a\nb\nc", "c").score == 1.0


def test_check_refuses_an_unknown_constraint_type_naming_it() -> None:
    with pytest.raises(TypeError, match=r"^object$"):
        instruction.check(object(), "x")  # type: ignore[arg-type]


def test_tool_call_arguments_match_whatever_their_key_order() -> None:
    spec = {"type": "tool_call", "match_ground_truth": True,
            "tools": [{"name": "move", "parameters": {"type": "object"}}]}
    completion = '{"name": "move", "arguments": {"x": 1, "y": 2}}'
    assert graded(spec, completion, {"name": "move", "arguments": {"y": 2, "x": 1}}).score == 1.0


def test_a_case_sensitive_regex_compiles_without_flags() -> None:
    import warnings

    sensitive = {"type": "regex", "pattern": "A+", "normalisation": {"case_sensitive": True}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stray re flag (re.TEMPLATE is 1) warns, and the grader reports it
        assert graded(sensitive, "xAAx", None) == GradeResult(score=1.0, details={"matched": "AA"})

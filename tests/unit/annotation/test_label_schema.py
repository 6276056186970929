"""Label schemas (services/annotation/label_schema.py): each question type's options and values, by hand."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from services.annotation.agreement import question_figure, scaled_alpha
from services.annotation.label_schema import (
    LabelSchema,
    RatingQuestion,
    TaskContext,
    check_values,
    label_key,
    parse_schema,
    preference_responses,
)
from services.common.errors import InvalidInput


def schema(*questions: dict[str, Any]) -> LabelSchema:
    return parse_schema({"questions": list(questions)})


def refused_schema(data: Any) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_schema(data)
    assert err.value.field is not None
    return err.value.field


def refused(s: LabelSchema, values: dict[str, Any], context: TaskContext | None = None) -> tuple[str, str]:
    with pytest.raises(InvalidInput) as err:
        check_values(s, values, context or TaskContext())
    assert err.value.field is not None
    return err.value.field, err.value.message


SINGLE = {"id": "topic", "type": "single_label", "prompt": "Topic?", "choices": ["algebra", "geometry", "other"]}
MULTI = {"id": "flags", "type": "multi_label", "choices": ["typo", "unsafe", "off-topic"], "max_selected": 2}
RATING = {"id": "quality", "type": "rating", "min": 1, "max": 5, "step": 0.5, "labels": {"1": "bad", "5": "great"}}
RANKING = {"id": "order", "type": "ranking", "items": ["x", "y", "z"]}
FREE = {"id": "note", "type": "free_text", "max_length": 10, "required": False}
PAIR = {"id": "pref", "type": "preference_pair", "rubric_hints": ["correct", "concise"], "rationale": "required"}


# ------------------------------------------------------------------------------------ the schema


def test_the_default_and_the_legacy_flat_form_are_one_math_answer_question() -> None:
    default = LabelSchema()
    assert [(q.id, q.type, q.required) for q in default.questions] == [("answer", "math_answer", True)]
    legacy = parse_schema({"free_form": False, "candidates": True, "ambiguous": False, "rationale": "required"})
    math = legacy.math
    assert math is not None and (math.free_form, math.candidates, math.ambiguous, math.rationale) == (
        False, True, False, "required")
    assert parse_schema({}).model_dump() == default.model_dump()


def test_schema_problems_name_the_field_without_the_union_tag() -> None:
    # question 1 has one choice: a single label needs two
    assert refused_schema({"questions": [SINGLE, {**SINGLE, "id": "b", "choices": ["only"]}]}) == \
        "label_schema.questions[1].choices"
    assert refused_schema({"questions": [{**SINGLE, "choices": ["a", "a"]}]}) == "label_schema.questions[0].choices"
    assert refused_schema({"questions": [{"id": "q", "type": "poll"}]}) == "label_schema.questions[0]"
    assert refused_schema({"questions": [{**SINGLE, "id": "1bad"}]}) == "label_schema.questions[0].id"
    assert refused_schema({"questions": [SINGLE, SINGLE]}) == "label_schema"  # duplicate ids
    assert refused_schema({"questions": []}) == "label_schema.questions"
    # the legacy form names its own fields, not the question they become
    assert refused_schema({"free_form": False, "candidates": False}) == "label_schema"
    assert refused_schema({"free_form": True, "colour": "red"}) == "label_schema"


@pytest.mark.parametrize(("options", "why"), [
    ({"min": 5, "max": 1}, "must be above min"),
    ({"min": 0, "max": 1, "step": 0.3}, "not a whole number of steps"),  # 1 / 0.3 = 3.33 steps
    ({"min": 0, "max": 1000, "step": 1}, "1001 points"),
    ({"labels": {"2.5": "half"}}, "not a point"),  # min 1, max 5, step 1: 2.5 is off the grid
    ({"labels": {"high": "x"}}, "not a number"),
])
def test_a_rating_scale_must_be_a_finite_grid(options: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_schema({"questions": [{"id": "r", "type": "rating", **options}]})
    assert why in err.value.message and err.value.field == "label_schema.questions[0]"


def test_multi_label_bounds_and_one_required_math_question() -> None:
    assert "max_selected is 4" in _message({"questions": [{**MULTI, "max_selected": 4}]})
    assert "above max_selected" in _message({"questions": [{**MULTI, "min_selected": 3}]})
    math = {"id": "m", "type": "math_answer"}
    assert "at most one math_answer" in _message({"questions": [math, {**math, "id": "n"}]})
    assert "always required" in _message({"questions": [{**math, "required": False}]})


def _message(data: Any) -> str:
    with pytest.raises(InvalidInput) as err:
        parse_schema(data)
    return err.value.message


def test_rating_scale_points_and_labels() -> None:
    question = RatingQuestion.model_validate({**RATING})
    # 1 to 5 in steps of 0.5: (5 - 1) / 0.5 + 1 = 9 points
    assert question.scale() == [("1", "bad"), ("1.5", ""), ("2", ""), ("2.5", ""), ("3", ""), ("3.5", ""),
                                ("4", ""), ("4.5", ""), ("5", "great")]


# ------------------------------------------------------------------------------------ the values


def test_each_type_accepts_its_value_and_normalises_it() -> None:
    s = schema(SINGLE, MULTI, RATING, RANKING, FREE, PAIR)
    context = TaskContext(pairs={"pref": ("resp 1", "resp 2")})
    got = check_values(s, {"topic": "geometry", "flags": ["off-topic", "typo"], "quality": "3.5",
                           "order": [2, 0, 1], "note": "ok", "pref": {"choice": "B", "rationale": " shorter "}},
                       context)
    assert got == {"topic": "geometry", "flags": ["typo", "off-topic"],  # the schema's order
                   "quality": 3.5, "order": [2, 0, 1], "note": "ok", "pref": {"choice": "B", "rationale": "shorter"}}
    # a whole-number rating is stored as such; a bare "A" is a preference choice
    assert check_values(schema(RATING), {"quality": 4}, TaskContext())["quality"] == 4.0
    bare = check_values(schema({**PAIR, "rationale": "off"}), {"pref": "tie"}, context)
    assert bare == {"pref": {"choice": "tie", "rationale": None}}


@pytest.mark.parametrize(("values", "field", "why"), [
    ({"topic": "history"}, "values.topic", "must be one of"),
    ({"topic": 1}, "values.topic", "must be one of"),
    ({"flags": ["typo", "typo"]}, "values.flags", "picked twice"),
    ({"flags": ["typo", "unsafe", "off-topic"]}, "values.flags", "pick 0 to 2 choices, not 3"),
    ({"flags": ["spam"]}, "values.flags", "not one of the choices"),
    ({"quality": 3.25}, "values.quality", "point of the scale 1 to 5 in steps of 0.5"),
    ({"quality": 5.5}, "values.quality", "point of the scale"),
    ({"quality": True}, "values.quality", "point of the scale"),
    ({"order": [0, 1]}, "values.order", "every item index 0 to 2"),
    ({"order": [0, 0, 1]}, "values.order", "exactly once"),
    ({"note": "x" * 11}, "values.note", "is 11 characters long; the limit is 10"),
    ({"note": "a\x00b"}, "values.note", "NUL character"),
    ({"pref": "C"}, "values.pref", "must be 'A', 'B', 'tie'"),
    ({"pref": {"choice": "A"}}, "values.pref.rationale", "requires a rationale"),
    ({"pref": {"choice": "A", "rationale": "r", "score": 1}}, "values.pref.score", "unknown field"),
    ({"colour": "red"}, "values.colour", "no such question"),
])
def test_a_bad_value_names_the_question_and_field(values: dict[str, Any], field: str, why: str) -> None:
    s = schema(SINGLE, MULTI, RATING, RANKING, FREE, PAIR)
    answered = {"topic": "algebra", "flags": [], "quality": 1, "order": [0, 1, 2],
                "pref": {"choice": "A", "rationale": "r"}}
    got_field, message = refused(s, {**answered, **values}, TaskContext(pairs={"pref": ("a", "b")}))
    assert (got_field, why in message) == (field, True), message


def test_required_questions_and_ones_the_task_does_not_offer() -> None:
    s = schema(SINGLE, {**RANKING, "items": None}, PAIR)
    assert refused(s, {}) == ("values.topic", "values.topic: this question is required")
    # no candidates to rank and no pair to compare: those required questions do not apply
    assert check_values(s, {"topic": "other"}, TaskContext(candidates=["4"])) == {"topic": "other"}
    assert refused(s, {"topic": "other", "pref": "A"})[0] == "values.pref"
    # a ranking of the task's candidates
    got = check_values(s, {"topic": "other", "order": [1, 0]}, TaskContext(candidates=["4", "5"]))
    assert got["order"] == [1, 0]
    assert refused(schema(FREE, {**FREE, "id": "must", "required": True}), {"must": "  "})[0] == "values.must"


def test_the_math_answer_value_follows_its_options() -> None:
    s = parse_schema({"free_form": False, "candidates": True, "ambiguous": False, "rationale": "required"})
    context = TaskContext(candidates=["4", "5"])
    assert check_values(s, {"answer": {"candidate": 1, "rationale": "the second"}}, context) == {
        "answer": {"kind": "answer", "answer": "5", "candidate": 1, "rationale": "the second"}}
    assert refused(s, {"answer": {"answer": "4", "rationale": "r"}}, context)[0] == "values.answer.answer"
    assert refused(s, {"answer": {"candidate": 2, "rationale": "r"}}, context)[1].endswith(
        "candidate 2 does not exist; this task has 2 candidates")
    assert refused(s, {"answer": {"ambiguous": True, "rationale": "r"}}, context)[0] == "values.answer.ambiguous"
    assert refused(s, {"answer": {"candidate": 0}}, context)[0] == "values.answer.rationale"
    free = LabelSchema()
    assert check_values(free, {"answer": "x^2"}, TaskContext())["answer"]["answer"] == "x^2"
    assert check_values(free, {"answer": {"ambiguous": True}}, TaskContext())["answer"]["kind"] == "ambiguous"


def test_the_pair_is_the_first_completion_of_the_two_largest_clusters() -> None:
    completions = ["so 4", "so 5", "I get 4", "five"]
    clusters = [{"answer": "4", "members": [2, 0]}, {"answer": "5", "members": [1, 3]}]
    assert preference_responses(completions, clusters) == ("I get 4", "so 5")
    assert preference_responses(completions, clusters[:1]) == ("so 4", "so 5")  # one cluster: first two
    assert preference_responses(None, clusters) == ("4", "5")  # no completions: the candidate answers
    assert preference_responses(completions, clusters, source="candidates") == ("4", "5")
    assert preference_responses(["only"], clusters[:1]) is None


def test_labels_agree_on_comparable_questions_only() -> None:
    s = schema(SINGLE, FREE, PAIR)
    one = {"topic": "algebra", "note": "hmm", "pref": {"choice": "A", "rationale": "x"}}
    two = {"topic": "algebra", "note": "other words", "pref": {"choice": "A", "rationale": "y"}}
    assert label_key(s, one) == label_key(s, two) == ("algebra", "A")
    assert label_key(s, {**two, "pref": {"choice": "B"}}) != label_key(s, one)


# ------------------------------------------------------------------------- agreement per question


def test_rating_alpha_interval_and_ordinal_by_hand() -> None:
    # Two tasks, two ratings each: (1, 2) and (3, 3). Coincidences o_12 = o_21 = 1, o_33 = 2; n_1 = n_2 = 1,
    # n_3 = 2, n = 4.
    units = [Counter({1.0: 1, 2.0: 1}), Counter({3.0: 2})]
    # interval, δ² = (c − k)²: D_o = (1 + 1) / 4 = 0.5; D_e = 2 (1·1·1 + 1·2·4 + 1·2·1) / 12 = 22/12;
    # α = 1 − 0.5 / (22/12) = 1 − 3/11 = 8/11
    assert scaled_alpha(units, "interval") == pytest.approx(8 / 11)
    # ordinal, δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²: δ²_12 = (2 − 1)² = 1, δ²_13 = (4 − 1.5)² = 6.25,
    # δ²_23 = (3 − 1.5)² = 2.25; D_o = 0.5; D_e = 2 (1 + 2·6.25 + 2·2.25) / 12 = 3; α = 1 − 0.5/3 = 5/6
    assert scaled_alpha(units, "ordinal") == pytest.approx(5 / 6)
    assert scaled_alpha([Counter({2.0: 2})], "interval") is None  # one point only: undefined


def test_preference_alpha_is_nominal_over_a_b_tie() -> None:
    question = schema(PAIR).questions[0]
    # Tasks: (A, A), (A, B), (B, B). o_AA = 2, o_BB = 2, o_AB = o_BA = 1; n_A = n_B = 3, n = 6.
    # D_o = 2/6; D_e = 2·3·3 / (6·5) = 18/30; α = 1 − (1/3) / (3/5) = 1 − 5/9 = 4/9
    units = [Counter({"A": 2}), Counter({"A": 1, "B": 1}), Counter({"B": 2})]
    figure = question_figure(question, units)
    assert figure.value == pytest.approx(4 / 9) and (figure.items, figure.labels) == (3, 6)
    free = question_figure(schema(FREE).questions[0], units)
    assert free.value is None and free.note == "free text is not compared"

"""Outcome-hint scrubbing and input validation of the rubric_rm schemas."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from services.rubric_rm.schemas import Diagnosis, Finding, PreferencePair, Rubric
from services.rubric_rm.scrub import find_winner_hints, scrub_diagnosis, scrub_winner_hints

LEAKY = [
    "This is the chosen response and it is clearly correct.",
    "Response A is the winner here.",
    "The preferred answer cites sources; the rejected one does not.",
    "Compared with Response (B), this one wins on accuracy.",
    "The better response would have used a table.",
    "assistant 2 is the dispreferred output",
]


@pytest.mark.parametrize("text", LEAKY)
def test_scrubbed_text_has_no_outcome_hints(text: str) -> None:
    assert find_winner_hints(text), "the case should leak before scrubbing"
    cleaned = scrub_winner_hints(text)
    assert find_winner_hints(cleaned) == []
    for word in ("chosen", "winner", "preferred", "rejected", "response a", "response b", "better response"):
        assert not re.search(rf"\b{word}\b", cleaned, re.IGNORECASE), (word, cleaned)


def test_neutral_text_is_untouched() -> None:
    text = "The answer gives an incorrect date (1999) and omits the second step."
    assert scrub_winner_hints(text) == text


def test_scrub_diagnosis_keeps_structure() -> None:
    diagnosis = Diagnosis(criteria_candidates=["accuracy of the chosen answer"], findings=[
        Finding(criterion="factual accuracy", status="fail", severity=3, claim="Response A is the winner",
                evidence="the preferred answer says 1999", instruction_anchor="the year")])
    cleaned = scrub_diagnosis(diagnosis)
    assert cleaned.findings[0].status == "fail" and cleaned.findings[0].severity == 3
    dumped = cleaned.model_dump_json()
    assert find_winner_hints(dumped) == []


def test_pair_accepts_chosen_rejected_form() -> None:
    pair = PreferencePair.model_validate({"instruction": "q", "chosen": "good", "rejected": "bad"})
    assert (pair.response_a, pair.response_b, pair.winner) == ("good", "bad", "A")
    assert (pair.chosen, pair.rejected) == ("good", "bad")
    other = PreferencePair(instruction="q", response_a="bad", response_b="good", winner="B")
    assert (other.chosen, other.rejected) == ("good", "bad")


@pytest.mark.parametrize(("data", "field"), [
    ({"instruction": " ", "chosen": "a", "rejected": "b"}, "instruction"),
    ({"instruction": "q", "chosen": "a"}, "rejected"),
    ({"instruction": "q", "chosen": "a", "rejected": "b", "winner": "A"}, "not both"),
    ({"instruction": "q", "response_a": "a", "response_b": "b", "winner": "C"}, "winner"),
])
def test_bad_pairs_name_the_field(data: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        PreferencePair.model_validate(data)


def test_rubric_validation() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        Rubric()
    with pytest.raises(ValidationError, match="unique"):
        Rubric.model_validate({"hard_rules": [
            {"rule_id": "R1", "type": "must", "criterion": "x", "test": "t"},
            {"rule_id": "R1", "type": "forbid", "criterion": "y", "test": "t"}]})
    ok = Rubric.model_validate({"hard_rules": [{"rule_id": "R1", "type": "MUST", "criterion": "x", "test": "t"}]})
    assert ok.hard_rules[0].type == "must"


def test_request_bodies_reject_empty_text_naming_the_field() -> None:
    from services.rubric_rm.schemas import DiagnoseRequest, EvalRequest, PointwiseJudgeRequest

    with pytest.raises(ValidationError, match=r"response\n.*non-empty"):
        DiagnoseRequest(instruction="q", response="  ")
    with pytest.raises(ValidationError, match="rubric"):
        PointwiseJudgeRequest.model_validate({"instruction": "q", "response": "r"})
    with pytest.raises(ValidationError, match="format"):
        EvalRequest.model_validate({"format": "helm", "rows": [{}]})
    with pytest.raises(ValidationError, match="unexpected"):
        DiagnoseRequest.model_validate({"instruction": "q", "response": "r", "unexpected": 1})

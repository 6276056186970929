"""The hint leak filter against adversarial hints: the answer spelled out, in LaTeX, with spaces, in words,
boxed, split across lines; and hints that must pass."""

from __future__ import annotations

import pytest

from services.teacher.leak_filter import (
    boxed_contents,
    check_hint,
    guarded_answers,
    number_words,
    parse_number,
)

REFERENCE = "Add the apples: 5 + 7 = 12, so \\boxed{12}."


@pytest.mark.parametrize(("hint", "reason"), [
    ("", "empty"),
    ("   \n ", "empty"),
    ("x" * 201, "length"),
    ("So the result is \\boxed{12}.", "boxed"),
    ("Try \\boxed {something}", "boxed"),
    ("The total is 12.", "numeric_answer"),
    ("The total is 12.0 apples", "numeric_answer"),
    ("Write down 1 2 as the total", "numeric_answer"),  # digits split by a space
    ("the total is 1\n2", "numeric_answer"),  # split across lines
    ("it equals $12$", "numeric_answer"),  # LaTeX math
    ("it is \\text{12} apples", "numeric_answer"),
    ("compute 24/2", "numeric_answer"),  # a fraction whose value is the answer
    ("the code is 3124", "numeric_answer"),  # the answer's digits inside a longer number
    ("the total is twelve", "answer_in_words"),
    ("the total is TWELVE", "answer_in_words"),
    ("the total is tw\nelve", "answer_in_words"),  # a word split across lines
    ("the total is t-w-e-l-v-e", "answer_in_words"),
])
def test_rejects_leaks_of_a_whole_number(hint: str, reason: str) -> None:
    verdict = check_hint(hint, guarded_answers("12", REFERENCE), max_chars=200)
    assert not verdict.ok
    assert verdict.reason == reason, verdict


@pytest.mark.parametrize(("hint", "answer", "reason"), [
    ("half of it: \\frac{1}{2}", "0.5", "numeric_answer"),
    ("half of it: \\dfrac12", "0.5", "numeric_answer"),
    ("it is 1/2", "\\frac{1}{2}", "numeric_answer"),
    ("it is 0.50", "1/2", "numeric_answer"),
    ("about 1,000 of them", "1000", "numeric_answer"),
    ("forty-two is close", "42", "answer_in_words"),
    ("forty two", "42", "answer_in_words"),
    ("one hundred and five", "105", "answer_in_words"),
    ("one hundred five", "105", "answer_in_words"),
    ("Perhaps Paris?", "Paris", "final_answer"),
    ("maybe P a r i s", "Paris", "final_answer"),
    ("maybe pa-\nris", "Paris", "final_answer"),
    ("the form x^{2} + 1 works", "x^2+1", "final_answer"),
    ("it is (C) again", "C", "final_answer"),
    ("the value -3 fits", "-3", "numeric_answer"),
    ("there are six", "6", "answer_in_words"),
    ("about one half of them", "0.5", "answer_in_words"),
    ("take half of it", "1/2", "answer_in_words"),
    ("three quarters remain", "\\frac{3}{4}", "answer_in_words"),
    ("two-thirds remain", "2/3", "answer_in_words"),
])
def test_rejects_other_answer_forms(hint: str, answer: str, reason: str) -> None:
    verdict = check_hint(hint, [answer], max_chars=500)
    assert (verdict.ok, verdict.reason) == (False, reason), verdict


@pytest.mark.parametrize(("hint", "answer"), [
    ("Check how you added the two amounts.", "12"),
    ("Recount the apples in the second basket.", "12"),
    ("Look at the units of the second step.", "0.5"),
    ("Someone should re-read the question.", "1"),  # "one" inside "someone" is no spelling of 1
    ("Which city hosts the Louvre?", "Paris"),
    ("Consider the case x = 1 and x = 2 apart.", "12"),  # 1 and 2 are separate numbers
    ("There are sixty of them", "6"),  # "six" only as a whole word
    ("Behalf of the class, recount.", "0.5"),  # "half" only as a whole word
])
def test_passes_hints_without_the_answer(hint: str, answer: str) -> None:
    assert check_hint(hint, [answer], max_chars=500).ok


def test_guarded_answers_come_from_answer_and_every_boxed_of_the_reference() -> None:
    assert guarded_answers("12", "first \\boxed{3} then \\boxed{\\frac{1}{2}}") == ["12", "3", "\\frac{1}{2}"]
    assert boxed_contents("\\boxed{a{b}c} and \\fbox{d}") == ["a{b}c", "d"]
    assert guarded_answers(None, None) == []


def test_number_helpers() -> None:
    assert number_words(42) == ["fortytwo"]
    assert number_words(105) == ["onehundredandfive", "onehundredfive"]
    assert number_words(2_000_001) == ["twomillionone"]
    assert parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert parse_number("1,000") == 1000
    assert parse_number("Paris") is None

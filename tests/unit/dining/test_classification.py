"""DiningBench classification: the option letter, accuracy and the unreadable share, hand-computed."""

from __future__ import annotations

import pytest

from trainer.dining.metrics import classification_metrics, clean_prediction, option_letter


@pytest.mark.parametrize(("prediction", "letter"), [
    ("B", "B"), (" b) Kung Pao chicken", "B"), ("**C**", "C"), ("Ｄ", "D"),  # full-width D after NFKC
    ("答案B", None),  # the first alphabetic character is 答, not a letter A–Z (as the authors' scripts)
    ("Answer: B", "A"),  # the first letter decides: prompts ask for the letter alone
    ("123", None), ("", None), (None, None),
])
def test_option_letter_is_the_first_alphabetic_character(prediction: str | None, letter: str | None) -> None:
    assert option_letter(prediction) == letter


def test_clean_prediction_drops_thinking_answer_tags_and_box() -> None:
    assert clean_prediction("<think>A or C? not A</think>\n\n\\boxed{C}") == "C"
    assert clean_prediction("reasoning <answer> B </answer>") == "B"
    assert clean_prediction(r"first \boxed{A}, finally \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert clean_prediction("  plain  ") == "plain"


def test_classification_accuracy_and_unreadable_share() -> None:
    pairs = [("A", "A"), ("B", "b. soup"), ("C", "D"), ("A", "答案A"), ("b", None)]
    # correct: A, b→B (2); wrong but readable: D (1); unreadable: 答案A, failed call (2); n = 5
    # accuracy = 2 / 5 = 0.4; unreadable share = 2 / 5 = 0.4
    assert classification_metrics(pairs) == {"n": 5, "correct": 2, "unreadable": 2, "accuracy": 0.4,
                                             "unreadable_share": 0.4}
    assert classification_metrics([])["accuracy"] is None

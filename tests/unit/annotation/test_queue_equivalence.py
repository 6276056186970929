"""Answer equivalence, clustering and the majority vote that the queue's agreement and pseudo-labels use."""

from __future__ import annotations

import threading

import pytest

from services.annotation.equivalence import answers_equivalent, cluster_answers, math_safe
from services.annotation.ingestion import vote
from services.annotation.models import LabelKind
from services.annotation.probes import rollout_correctness
from services.annotation.queue import label_clusters


@pytest.mark.parametrize(("a", "b"), [
    ("1/2", r"\frac{1}{2}"), (r"\frac12", "0.5"), ("x^2+y^2", "y^2+x^2"), (r"\{1,2\}", r"\{2,1\}"),
    (r"10\%", "0.1"), ("B", r"\text{(B)}"), ("Paris", "paris"), ("$3$", "3"), (" 4 ", "4"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
])
def test_equivalent(a: str, b: str) -> None:
    assert answers_equivalent(a, b) and answers_equivalent(b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("3", "4"), ("Paris", "Sirap"), ("(1,2)", "(2,1)"), ("x", "y"), (None, "3"), ("3", None), (None, None),
])
def test_not_equivalent(a: str | None, b: str | None) -> None:
    assert not answers_equivalent(a, b)


def test_power_towers_are_compared_as_strings_and_never_hang() -> None:
    assert not math_safe("2^{2^{100}}") and not math_safe("9^9^9") and not math_safe("10^{100000}")
    assert math_safe("x^2+y^2")
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(answers_equivalent("2^{2^{100}}", "3")))
    thread.start()
    thread.join(timeout=30)
    assert done == [False]


def test_clusters_are_largest_first_with_ties_to_the_earliest() -> None:
    assert cluster_answers(["3", "4", "4", "3", None, " "]) == [[0, 3], [1, 2]]
    assert cluster_answers(["1/2", "0.5", None, "3", r"\frac{1}{2}", "3", "", "4"]) == [[0, 1, 4], [3, 5], [7]]
    assert cluster_answers([None, None]) == []


def test_vote_gives_pseudo_label_and_ratios_over_n() -> None:
    result = vote(["7", "7", "8", None, "7.0", "9", None, "8"])
    assert result.pseudo_label == "7" and result.majority_ratio == 3 / 8 and result.valid_ratio == 6 / 8
    empty = vote([None, None, None, None])
    assert empty.pseudo_label is None and empty.majority_ratio == 0.0 and empty.valid_ratio == 0.0


def test_rollout_correctness_marks_the_members_equivalent_to_the_label() -> None:
    answers = ["7", "7", "8", None, "7.0", "9", None, "8"]
    clusters = vote(answers).clusters
    assert rollout_correctness(answers, clusters, "8") == [False, False, True, False, False, False, False, True]
    assert rollout_correctness(answers, clusters, "14/2") == [True, True, False, False, True, False, False, False]


def test_annotator_labels_agree_by_equivalence_and_ambiguous_flags_group_together() -> None:
    labels = [(LabelKind.answer, "0.5"), (LabelKind.ambiguous, None), (LabelKind.answer, r"\frac{1}{2}"),
              (LabelKind.ambiguous, None), (LabelKind.answer, "2")]
    assert label_clusters(labels) == [[0, 2], [1, 3], [4]]

"""Krippendorff's alpha for ranking questions (agreement.ranking_alpha): ordinal alpha over rank positions,
one unit per (task, item), worked by hand; and the figure the quality API shows for a ranking question."""

from __future__ import annotations

import pytest

from services.annotation.agreement import question_level, rank_units, ranking_alpha, ranking_figure
from services.annotation.label_schema import RankingQuestion


def test_rank_units_turn_orders_into_each_items_ranks() -> None:
    # [0, 1, 2] ranks item 0 first; [1, 0, 2] ranks item 1 first: item 0 got ranks {1, 2}, item 1 {2, 1}, item 2 {3, 3}.
    assert rank_units([[[0, 1, 2], [1, 0, 2]]]) == [{1.0: 1, 2.0: 1}, {2.0: 1, 1.0: 1}, {3.0: 2}]
    assert rank_units([[[0, 1, 2]]]) == []  # one ranking: nothing to compare


def test_ranking_alpha_by_hand() -> None:
    # One task, two annotators swapping the top two of three items. Units {1,2}, {2,1}, {3,3}: n_1 = n_2 = n_3 = 2,
    # n = 6; coincidences o_12 = o_21 = 2, o_33 = 2. Ordinal δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²:
    # δ²_12 = (4 − 2)² = 4, δ²_13 = (6 − 2)² = 16, δ²_23 = 4.
    # D_o = (2·4 + 2·4)/6 = 8/3; D_e = 2·(2·2·4 + 2·2·16 + 2·2·4)/(6·5) = 192/30; α = 1 − (8/3)/(32/5) = 7/12.
    assert ranking_alpha([[[0, 1, 2], [1, 0, 2]]]) == pytest.approx(7 / 12)
    # Two items in opposite orders: units {1,2}, {2,1}: D_o = 4·4/4 = 4, D_e = 2·(2·2·4)/(4·3) = 8/3, α = −1/2.
    assert ranking_alpha([[[0, 1], [1, 0]]]) == pytest.approx(-0.5)
    # Full agreement on two tasks (one reversed): α = 1.
    assert ranking_alpha([[[0, 1, 2], [0, 1, 2]], [[2, 1, 0], [2, 1, 0]]]) == pytest.approx(1.0)
    assert ranking_alpha([[[0, 1]]]) is None  # nothing comparable


def test_the_ranking_figure_counts_tasks_and_labels() -> None:
    question = RankingQuestion(id="order", type="ranking", items=["x", "y", "z"])
    assert question_level(question) == "ordinal"
    labelled: list[list[dict[str, object] | None]] = [
        [{"order": [0, 1, 2]}, {"order": [1, 0, 2]}, {"order": None}], [{"order": [0, 1, 2]}], [None, {}]]
    figure = ranking_figure(question, labelled)
    assert figure.value == pytest.approx(7 / 12)
    assert (figure.items, figure.labels, figure.note) == (1, 2, None)
    empty = ranking_figure(question, [[{"order": [0, 1, 2]}]])
    assert (empty.value, empty.items, empty.note) == (None, 0, "no task has two labels yet")

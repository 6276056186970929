"""CARE formulas against hand-computed values: advantages, CAG (exact and closed form), expected gap,
class weights, baseline scores and the probes' feature/label construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.annotation.care import acquisition as acq
from services.annotation.care import features as feat
from services.annotation.care.cag import (
    cag_cost,
    corrective_advantage_gap,
    cost_table,
    expected_gap,
    grpo_advantage,
)
from services.annotation.care.features import GroupView
from services.annotation.care.probes import class_weights


def test_grpo_advantage_uses_population_std_and_is_zero_for_constant_rewards() -> None:
    # r = [1,0,0,0]: mean 1/4, population std √(3)/4 → A = [√3, −1/√3, −1/√3, −1/√3].
    a = grpo_advantage(np.array([1.0, 0, 0, 0]))
    assert a == pytest.approx([math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])
    assert grpo_advantage(np.array([1.0, 1, 1])).tolist() == [0.0, 0.0, 0.0]


def test_cag_closed_form_matches_hand_value_and_the_definition() -> None:
    # n=4, majority x=2 (rollouts 0,1), c=1 correct elsewhere (rollout 2):
    # A(t) = [−1/√3, −1/√3, √3, −1/√3], A(p) = [1, 1, −1, −1] → ‖A(t) − A(p)‖² = 8 + 8/√3.
    assert cag_cost(4, 2, 1) == pytest.approx(math.sqrt(8 + 8 / math.sqrt(3)))
    assert corrective_advantage_gap(np.array([0, 0, 1, 0.0]), np.array([1, 1, 0, 0.0])) == \
        pytest.approx(cag_cost(4, 2, 1))
    # True rewards the exact complement of the pseudo ones: A(t) = −A(p), so the gap is 2√n.
    assert cag_cost(8, 5, 3) == pytest.approx(2 * math.sqrt(8))
    # c = 0 (specs/care.md, corrected): the vote is wrong and no rollout is correct, so A(t) = 0 and the
    # gap is ‖A(p)‖ = √n — never 0 while the vote splits the group (0 < x < n).
    assert cag_cost(8, 5, 0) == pytest.approx(2.8284271247461903)  # √8
    assert cag_cost(4, 4, 0) == 0.0 and cag_cost(4, 0, 0) == 0.0  # A(p) = 0: unanimous, or no answer


def test_cag_closed_form_agrees_with_the_definition_for_every_count() -> None:
    n = 6
    for x in range(0, n + 1):
        for c in range(0, n - x + 1):
            pseudo = np.array([1.0] * x + [0.0] * (n - x))
            true = np.array([0.0] * x + [1.0] * c + [0.0] * (n - x - c))
            assert cag_cost(n, x, c) == pytest.approx(corrective_advantage_gap(true, pseudo)), (x, c)


def test_cag_cost_rejects_impossible_counts_and_table_zeroes_them() -> None:
    with pytest.raises(ValueError):
        cag_cost(4, 3, 2)
    table = cost_table(4, 3)
    assert table.shape == (5,)
    # cost(0) = √4 = 2 (x = 3 splits the group); c ≥ 2 is impossible beside a majority of 3.
    assert table[0] == pytest.approx(2.0) and table[2:].tolist() == [0.0, 0.0, 0.0]
    assert table[1] == pytest.approx(cag_cost(4, 3, 1))


def test_expected_gap_is_probability_weighted_cost() -> None:
    # 0.5·0 + 0.25·2 + 0.25·4 = 1.5
    assert expected_gap(np.array([[0.5, 0.25, 0.25]]), np.array([[0.0, 2.0, 4.0]])).tolist() == [1.5]


def test_class_weights_inverse_sqrt_normalised_and_clipped() -> None:
    # counts 9,1 → 1/3, 1 → mean 2/3 → 0.5, 1.5
    assert class_weights(np.array([9, 1])) == pytest.approx([0.5, 1.5])
    # counts 100,1 → 0.1, 1 → /0.55 → 0.1818, 1.818 → clipped below at 0.25
    assert class_weights(np.array([100, 1])) == pytest.approx([0.25, 1 / 0.55])
    assert class_weights(np.array([0, 4, 0])).tolist() == [1.0, 1.0, 1.0]


def view(clusters: list[list[int]], n: int = 4, **kw: object) -> GroupView:
    return GroupView(n=n, clusters=clusters, **kw)  # type: ignore[arg-type]


def test_baseline_scores() -> None:
    g = view([[0, 1], [2], [3]])
    assert acq.low_consensus_score(g) == pytest.approx(0.5)
    # sizes 2,1,1 of 4: −(½ ln ½ + 2·¼ ln ¼) = 1.0397
    assert acq.cluster_entropy(g) == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    # unparseable rollouts count as singletons: the same entropy
    assert acq.cluster_entropy(view([[0, 1]])) == pytest.approx(acq.cluster_entropy(g))
    assert acq.cluster_entropy(view([[0, 1, 2, 3]])) == 0.0
    # oracle: majority {0,1} wrong, rollout 2 right → the n=4, x=2, c=1 gap
    assert acq.oracle_cag(g, [False, False, True, False]) == pytest.approx(cag_cost(4, 2, 1))
    assert acq.oracle_cag(g, [True, True, False, False]) == 0.0


def test_random_scores_are_seeded_per_step() -> None:
    a, b = acq.random_scores(5, seed=3, step=7), acq.random_scores(5, seed=3, step=7)
    assert a.tolist() == b.tolist()
    assert a.tolist() != acq.random_scores(5, seed=3, step=8).tolist()


def test_prompt_stats_rollout_extras_and_labels() -> None:
    g = view([[1, 2], [0]], response_lengths=[2000, 8000, 0, 400])  # rollout 3 unparseable
    # [valid_ratio 3/4, sizes 2/4, 1/4, 0, 0, lengths/4000 clipped: 0.5, 1, 0, 0.1]
    assert feat.prompt_stats(g, 4000.0) == pytest.approx([0.75, 0.5, 0.25, 0, 0, 0.5, 1.0, 0.0, 0.1])
    extras = feat.rollout_extras(g, 4000.0)
    assert extras[1].tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0])
    assert extras[3].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.1])
    assert feat.stage2_class_mask(g).tolist() == [True, True, False, False, False]
    assert feat.stage2_pool_mask(g).tolist() == [True, False, False, False]
    assert feat.labels(g, [True, False, False, False]) == (0, 1)
    assert feat.labels(g, [False, True, True, False]) == (1, 0)
    assert feat.labels(view([]), [False] * 4) == (0, 0)

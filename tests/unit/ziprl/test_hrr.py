"""Hindsight Response Replay: h_t, the group means for rollouts of different lengths, the reshaping
and its sign guard, per-token advantages; every value computed by hand in the comments."""

from __future__ import annotations

import pytest

from trainer.ziprl.hrr import (
    HRRConfig,
    group_baselines,
    hindsight_scores,
    token_advantages,
    turn_advantages,
    unit_survives,
)

NEEDED = [["Ann Lee", "Bolt Labs"], ["Bolt Labs", "Cy Moe"]]


def test_units_survive_only_together_in_one_item() -> None:
    assert unit_survives("[p1] employer ann lee BOLT   Labs", ["Ann Lee", "Bolt Labs", "employer"])
    assert not unit_survives("[p1] employer Ann Lee\n[p2] Bolt Labs", ["Ann Lee", "Bolt Labs"])
    assert not unit_survives("anything", [" "])


def test_hindsight_scores() -> None:
    memories = ["[p1] Ann Lee works at Bolt Labs\n[p2] Bolt Labs was founded by Cy Moe",
                "[p1] Ann Lee works at Bolt Labs", ""]
    # turn 0: both units (2/2); turn 1: the first only (1/2); turn 2: none.
    assert hindsight_scores(memories, NEEDED) == [1.0, 0.5, 0.0]
    assert hindsight_scores(memories, []) == [0.0, 0.0, 0.0]


H = [[1.0, 0.5, 0.0], [0.5, 0.5], [0.0]]  # three rollouts of 3, 2 and 1 turns


def test_group_means_for_rollouts_of_different_lengths() -> None:
    # per_turn: t0 (1 + 0.5 + 0) / 3 = 0.5; t1 (0.5 + 0.5) / 2 = 0.5; t2 only rollout 0: 0.0.
    assert group_baselines(H, "per_turn") == [[0.5, 0.5, 0.0], [0.5, 0.5], [0.5]]
    # carry_forward: t1 (0.5 + 0.5 + 0.0 carried) / 3 = 1/3; t2 (0.0 + 0.5 carried + 0.0 carried) / 3 = 1/6.
    carried = group_baselines(H, "carry_forward")
    assert carried[0] == pytest.approx([0.5, 1 / 3, 1 / 6]) and carried[2] == pytest.approx([0.5])
    # pooled: (1 + 0.5 + 0 + 0.5 + 0.5 + 0) / 6 = 2.5 / 6.
    assert group_baselines(H, "pooled") == [[pytest.approx(2.5 / 6)] * 3, [pytest.approx(2.5 / 6)] * 2,
                                            [pytest.approx(2.5 / 6)]]


def test_reshaping_by_hand() -> None:
    shaped = turn_advantages([1.0, -0.5, 0.0], H, HRRConfig(beta=0.5))
    # rollout 0 (A = 1): t0 1 + 0.5 (1 - 0.5) = 1.25; t1 1 + 0.5 (0.5 - 0.5) = 1.0; t2 1 + 0.5 (0 - 0) = 1.0.
    # rollout 1 (A = -0.5): t0 -0.5 + 0.5 (0.5 - 0.5) = -0.5; t1 the same.
    # rollout 2 (A = 0): not shaped by default.
    assert shaped == [[1.25, 1.0, 1.0], [-0.5, -0.5], [0.0]]
    # carry_forward changes t1 and t2 of rollout 0: 1 + 0.5 (0.5 - 1/3) = 1.083333; 1 + 0.5 (0 - 1/6) = 0.916667.
    carried = turn_advantages([1.0, -0.5, 0.0], H, HRRConfig(beta=0.5, group_mean="carry_forward"))
    assert carried[0] == pytest.approx([1.25, 1 + 0.5 / 6, 1 - 0.5 / 6])


def test_the_sign_of_the_outcome_advantage_never_flips() -> None:
    h = [[0.0], [1.0]]  # group mean 0.5
    # A = 0.1: 0.1 + 0.5 (0 - 0.5) = -0.15 -> clamped to max(-0.15, 0 * 0.1) = 0.0.
    # A = -0.1: -0.1 + 0.5 (1 - 0.5) = 0.15 -> clamped to min(0.15, 0 * -0.1) = 0.0.
    assert turn_advantages([0.1, -0.1], h, HRRConfig(beta=0.5)) == [[0.0], [0.0]]
    # floor 0.5 keeps half the outcome: max(-0.15, 0.05) = 0.05; min(0.15, -0.05) = -0.05.
    assert turn_advantages([0.1, -0.1], h, HRRConfig(beta=0.5, floor=0.5)) == [
        [pytest.approx(0.05)], [pytest.approx(-0.05)]]
    # A large outcome is not clamped: 2 + 0.5 (0 - 0.5) = 1.75.
    assert turn_advantages([2.0, -2.0], h, HRRConfig(beta=0.5)) == [[1.75], [-1.75]]
    # With shape_zero_advantage an all-equal group gets the memory credit alone: +-0.5 * 0.5.
    assert turn_advantages([0.0, 0.0], [[1.0], [0.0]], HRRConfig(beta=0.5, shape_zero_advantage=True)) == [
        [0.25], [-0.25]]


def test_token_advantages_follow_turns() -> None:
    # tokens: prompt, turn 0, turn 0, an observation (masked, -1), turn 1.
    assert token_advantages(1.0, [1.25, 0.75], [-1, 0, 0, -1, 1]) == [1.0, 1.25, 1.25, 1.0, 0.75]
    with pytest.raises(ValueError):
        token_advantages(1.0, [1.25], [0, 1])
    with pytest.raises(ValueError):
        turn_advantages([1.0], [], HRRConfig())
    with pytest.raises(ValueError):
        HRRConfig(beta=-1)
    with pytest.raises(ValueError):
        HRRConfig(floor=2)

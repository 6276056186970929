"""Group advantages, unscorable rewards and DAPO's data-side tricks against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms import (
    group_advantages,
    informative_groups,
    nan_std,
    overlong_penalty,
    rewards_tensor,
    zero_std_group_fraction,
)

# Two groups of G = 4: one with spread, one all equal.
REWARDS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
# Group 1: mean 2.5, deviations ±0.5, ±1.5, unbiased var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
STD_G1 = math.sqrt(5 / 3)
# Whole batch: mean 3.75, Σ(x − mean)² = 17.5, unbiased var = 17.5 / 7 = 2.5.
STD_BATCH = math.sqrt(2.5)


def close(actual: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_group_scaling_is_grpo() -> None:
    adv = group_advantages(REWARDS, 4, scale_rewards="group", eps=0.0)
    expected = [d / STD_G1 for d in (-1.5, -0.5, 0.5, 1.5)] + [0.0] * 4
    assert close(adv, expected)


def test_default_eps_is_added_to_the_std() -> None:
    adv = group_advantages(REWARDS, 4)
    assert adv[3].item() == pytest.approx(1.5 / (STD_G1 + 1e-4), abs=1e-6)


def test_batch_scaling_divides_by_the_batch_std_but_centres_per_group() -> None:
    adv = group_advantages(REWARDS, 4, scale_rewards="batch", eps=0.0)
    assert close(adv, [d / STD_BATCH for d in (-1.5, -0.5, 0.5, 1.5)] + [0.0] * 4)


def test_batch_scaling_adds_eps_to_the_batch_std() -> None:
    # A non-zero eps tells "/ (std + eps)" from "/ std" and from "/ std + eps": 1.5 / (√2.5 + 0.5).
    adv = group_advantages(REWARDS, 4, scale_rewards="batch", eps=0.5)
    assert close(adv, [d / (STD_BATCH + 0.5) for d in (-1.5, -0.5, 0.5, 1.5)] + [0.0] * 4)
    assert adv[3].item() == pytest.approx(1.5 / (1.5811388300841898 + 0.5), abs=1e-6)


def test_group_scaling_adds_eps_to_the_group_std() -> None:
    adv = group_advantages(REWARDS, 4, scale_rewards="group", eps=0.5)
    assert adv[3].item() == pytest.approx(1.5 / (1.2909944487358056 + 0.5), abs=1e-6)
    # The all-equal group has std 0: its advantages are 0 / (0 + eps) = 0, not NaN.
    assert close(adv[4:], [0.0] * 4)


def test_no_scaling_is_dr_grpo() -> None:
    adv = group_advantages(REWARDS, 4, scale_rewards="none")
    assert close(adv, [-1.5, -0.5, 0.5, 1.5, 0.0, 0.0, 0.0, 0.0])


def test_unscorable_rewards_leave_the_baseline_and_get_zero_advantage() -> None:
    # Valid [1, 0, 1]: mean 2/3, deviations 1/3, −2/3, 1/3; unbiased var = (1/9 + 4/9 + 1/9) / 2 = 1/3.
    rewards = rewards_tensor([1.0, None, 0.0, 1.0])
    adv = group_advantages(rewards, 4, eps=0.0)
    std = math.sqrt(1 / 3)
    assert close(adv, [(1 / 3) / std, 0.0, (-2 / 3) / std, (1 / 3) / std])
    assert close(group_advantages(rewards, 4, scale_rewards="none"), [1 / 3, 0.0, -2 / 3, 1 / 3])


def test_a_group_with_no_valid_reward_has_zero_advantages() -> None:
    # Second group [1, 0]: deviations ±0.5, unbiased var = 0.5.
    rewards = rewards_tensor([None, None, 1.0, 0.0])
    assert close(group_advantages(rewards, 2, eps=0.0), [0.0, 0.0, 0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)])


def test_statuses_other_than_ok_become_nan() -> None:
    rewards = rewards_tensor([1.0, 0.5, float("nan")], statuses=["ok", "timeout", "ok"])
    assert rewards[0].item() == 1.0 and torch.isnan(rewards[1:]).all()
    with pytest.raises(ValueError, match="statuses"):
        rewards_tensor([1.0], statuses=["ok", "ok"])


def test_bad_shapes_and_options_are_named() -> None:
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 4, scale_rewards="global")  # type: ignore[arg-type]


def test_nan_std_matches_the_unbiased_std_and_ignores_nan() -> None:
    assert nan_std(torch.tensor([1.0, 2.0, 3.0, 4.0])).item() == pytest.approx(STD_G1)
    assert nan_std(torch.tensor([1.0, float("nan"), 3.0])).item() == pytest.approx(math.sqrt(2.0))
    assert nan_std(torch.tensor([7.0, float("nan")])).item() == 0.0


def test_zero_std_group_fraction() -> None:
    assert zero_std_group_fraction(REWARDS, 4) == 0.5


def test_dynamic_sampling_keeps_only_groups_with_spread() -> None:
    rewards = rewards_tensor([1, 1, 1, 1, 0, 1, 0, 0, None, 1, None, None, 0, 0, 0, 0])
    assert informative_groups(rewards, 4).tolist() == [False, True, False, False]


def test_overlong_penalty_is_a_linear_ramp_over_the_cache() -> None:
    # L_max = 10, L_cache = 4: no penalty up to 6 tokens, then −(|y| − 6) / 4, −1 beyond 10.
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])
    assert close(overlong_penalty(lengths, max_length=10, cache_length=4), [0, 0, -0.25, -0.5, -1, -1])
    assert close(overlong_penalty(lengths, max_length=10, cache_length=4, factor=0.5),
                 [0, 0, -0.125, -0.25, -0.5, -0.5])
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(lengths, max_length=10, cache_length=10)

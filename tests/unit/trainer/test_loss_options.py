"""The loss and advantage options (issue 13) against hand-computed values.

Every expected number is written out here, worked by hand in the comment beside it; none is
recomputed with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms import (
    KL_ESTIMATORS,
    TOKEN_WEIGHTED_ESTIMATORS,
    aggregate_loss,
    cispo_surrogate,
    entropy_bonus,
    group_advantages,
    grpo_policy_loss,
    importance_weights,
    kl_divergence,
    kl_penalised_rewards,
    log_ratio,
    mask_truncated,
    rollout_is_weights,
    truncated_completions,
)

# ---------------------------------------------------------------- log-ratio and KL clamps


def test_a_log_ratio_of_30_with_a_negative_advantage_is_clamped_at_20() -> None:
    # Unclamped: ρ = e^30 ≈ 1.07e13 and, with A = −1, ℓ = max(ρ, clip ρ) = e^30 — the 1e13 loss.
    # Clamped (veRL's ±20): ρ = e^20 = 485165195.40979 and the token has no gradient left.
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), 30.0, requires_grad=True)
    out = grpo_policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 1), loss_type="bnpo")
    assert out.loss.item() == pytest.approx(485165195.40979, rel=1e-6)
    out.loss.backward()
    assert logp.grad is not None and logp.grad.item() == 0.0
    unclamped = grpo_policy_loss(torch.full((1, 1), 30.0, dtype=torch.float64), old.double(), torch.tensor([-1.0]),
                                 torch.ones(1, 1), loss_type="bnpo", log_ratio_clamp=None)
    assert unclamped.loss.item() == pytest.approx(1.0686474581524463e13, rel=1e-9)


def test_log_ratio_clamp_is_symmetric_and_optional() -> None:
    logp, old = torch.tensor([[25.0, -25.0, 3.0]]), torch.zeros(1, 3)
    assert log_ratio(logp, old, 20.0).tolist() == [[20.0, -20.0, 3.0]]
    assert log_ratio(logp, old).tolist() == [[25.0, -25.0, 3.0]]
    # Sequence level: the clamped token log-ratios 20, −20, 3 average to 1: s = e^1.
    weight = importance_weights(logp, old, torch.ones(1, 3), "sequence", log_ratio_clamp=20.0)
    assert weight.item() == pytest.approx(math.e)


# logp = log 0.5, ref = log 0.25: logp − ref = log 2 = 0.6931472.
LOGP, REF = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])


@pytest.mark.parametrize(("estimator", "expected"), [
    ("k1", 0.6931472),  # log 2
    ("k2", 0.2402265),  # ½ (log 2)² = 0.5 × 0.480453
    ("k3", 0.1931472),  # e^(−log 2) + log 2 − 1 = 0.5 + 0.6931472 − 1
])
def test_kl_estimators(estimator: str, expected: float) -> None:
    assert kl_divergence(LOGP, REF, estimator).item() == pytest.approx(expected, abs=1e-6)


def test_kl_estimator_registry_and_unknown_names() -> None:
    assert KL_ESTIMATORS.names() == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match=r"kl_estimator must be one of 'k1', 'k2' or 'k3', got 'k4'"):
        kl_divergence(LOGP, REF, "k4")


def test_kl_clamps_follow_verl_low_var_kl() -> None:
    # ref − logp = 30: the log-ratio clamp makes it 20, k3 = e^20 − 20 − 1 = 485165174.40979, then the
    # KL clamp caps the estimate at 10. k1 of a log-ratio −30 clamps to −20, then to −10.
    logp, ref = torch.tensor([[0.0]]), torch.tensor([[30.0]])
    assert kl_divergence(logp, ref, "k3", log_ratio_clamp=20.0, kl_clamp=10.0).item() == 10.0
    assert kl_divergence(logp, ref, "k3", log_ratio_clamp=20.0).item() == pytest.approx(485165174.40979, rel=1e-6)
    assert kl_divergence(logp, ref, "k1", log_ratio_clamp=20.0, kl_clamp=10.0).item() == -10.0


def test_policy_loss_uses_the_chosen_kl_estimator() -> None:
    # On-policy (ρ = 1), A = 0, β = 0.5, k1 = log 2 on one token: loss = 0.5 × 0.6931472 = 0.3465736.
    out = grpo_policy_loss(LOGP, LOGP, torch.tensor([0.0]), torch.ones(1, 1), loss_type="bnpo", beta=0.5,
                           ref_logp=REF, kl_estimator="k1")
    assert out.loss.item() == pytest.approx(0.3465736, abs=1e-6)
    assert out.metrics["kl"] == pytest.approx(0.6931472, abs=1e-6)


# ---------------------------------------------------------------- GSPO through the full loss


def test_sequence_level_ratio_in_the_loss_and_its_gradient() -> None:
    # log ρ = [0.1, 0.3] → s = e^0.2 = 1.2214028 (inside the clip 1.28), A = 1, bnpo:
    # loss = mean(−s, −s) = −1.2214028; ∂loss/∂logp_t = −s · ½ (each token carries half the mean) = −0.6107014.
    logp = torch.tensor([[0.1, 0.3]], requires_grad=True)
    out = grpo_policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), loss_type="bnpo",
                           importance_sampling_level="sequence")
    assert out.loss.item() == pytest.approx(-1.2214028, abs=1e-6)
    out.loss.backward()
    assert logp.grad is not None and logp.grad[0].tolist() == pytest.approx([-0.6107014, -0.6107014], abs=1e-6)


# ---------------------------------------------------------------- CISPO


def test_cispo_weight_is_clipped_detached_and_multiplies_the_log_prob() -> None:
    # Token 0: ρ = 6 → w = min(6, 1 + 4) = 5; token 1: ρ = 0.5, no lower bound → w = 0.5.
    # A = 2, log π = [−1, −2]: ℓ = −w·A·log π = [10, 2]; ∂ℓ/∂log π = −w·A = [−10, −1].
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0 - math.log(6.0), -2.0 + math.log(2.0)]])
    ratio = torch.exp(logp - old)
    loss = cispo_surrogate(ratio, logp, torch.tensor([2.0]), eps_low=None, eps_high=4.0)
    assert loss[0].tolist() == pytest.approx([10.0, 2.0], abs=1e-5)
    loss.sum().backward()
    assert logp.grad is not None and logp.grad[0].tolist() == pytest.approx([-10.0, -1.0], abs=1e-5)
    # With ε_low = 0.2 the low weight is lifted to 0.8: ℓ_1 = −0.8 · 2 · (−2) = 3.2.
    lifted = cispo_surrogate(ratio.detach(), logp.detach(), torch.tensor([2.0]), eps_low=0.2, eps_high=4.0)
    assert lifted[0, 1].item() == pytest.approx(3.2, abs=1e-5)


def test_cispo_loss_type_reduces_as_a_global_token_mean_and_reports_its_clipping() -> None:
    # Same two tokens in one row, dapo-style normaliser N = 4 tokens in the batch: (10 + 2) / 4 = 3.
    logp = torch.tensor([[-1.0, -2.0]])
    old = torch.tensor([[-1.0 - math.log(6.0), -2.0 + math.log(2.0)]])
    out = grpo_policy_loss(logp, old, torch.tensor([2.0]), torch.ones(1, 2), loss_type="cispo",
                           num_items_in_batch=4, cispo_eps_high=4.0)
    assert out.loss.item() == pytest.approx(3.0, abs=1e-5)
    # Only ρ = 6 is clipped (above 5); with no lower bound ρ = 0.5 is not.
    assert out.metrics["clip_fraction_high"] == 0.5 and out.metrics["clip_fraction_low"] == 0.0


# ---------------------------------------------------------------- entropy bonus and token-sum aggregation

ENTROPY = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(("loss_type", "kwargs", "expected"), [
    ("bnpo", {}, 10 / 4),  # (1 + 2 + 3 + 4) / 4 tokens
    ("grpo", {}, (6 / 3 + 4 / 1) / 2),  # mean per row: 2 and 4
    ("dapo", {"num_items_in_batch": 20}, 10 / 20),
    ("seq_mean_token_sum", {}, (6 + 4) / 2),
])
def test_entropy_bonus_is_reduced_like_the_loss(loss_type: str, kwargs: dict[str, int], expected: float) -> None:
    assert entropy_bonus(ENTROPY, MASK, loss_type, **kwargs).item() == pytest.approx(expected)


def test_entropy_bonus_is_subtracted_with_its_gradient() -> None:
    # Policy term 0 (A = 0); c = 0.1, bnpo: loss = −0.1 × 2.5 = −0.25; ∂loss/∂H_t = −0.1 / 4 on counted tokens.
    entropy = ENTROPY.clone().requires_grad_(True)
    zeros = torch.zeros(2, 3)
    out = grpo_policy_loss(zeros, zeros, torch.zeros(2), MASK, loss_type="bnpo", entropy=entropy, entropy_coef=0.1)
    assert out.loss.item() == pytest.approx(-0.25)
    out.loss.backward()
    assert entropy.grad is not None
    assert entropy.grad[0].tolist() == pytest.approx([-0.025, -0.025, -0.025])
    assert entropy.grad[1].tolist() == pytest.approx([-0.025, 0.0, 0.0])
    with pytest.raises(ValueError, match="entropy"):
        grpo_policy_loss(zeros, zeros, torch.zeros(2), MASK, entropy_coef=0.1)


def test_seq_mean_token_sum_leaves_fully_masked_rows_out_of_the_mean() -> None:
    # Row sums 6 and 4 over 2 rows: 5. With row 1 fully masked: 6 over the 1 row that counts.
    assert aggregate_loss(ENTROPY, MASK, "seq_mean_token_sum").item() == pytest.approx(5.0)
    assert aggregate_loss(ENTROPY, torch.tensor([[1, 1, 1], [0, 0, 0]]), "seq_mean_token_sum").item() == 6.0


# ---------------------------------------------------------------- estimators


def close(actual: torch.Tensor, expected: list[float]) -> bool:
    return torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_rloo_uses_the_mean_of_the_other_rewards() -> None:
    # Group [1, 0, 0, 1]: baselines 1/3, 2/3, 2/3, 1/3 → A = 2/3, −2/3, −2/3, 2/3.
    assert close(group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, scale_rewards="rloo"),
                 [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # [1, NaN, 0, 0]: siblings are the valid ones only: 1 − 0, 0 − ½, 0 − ½; the NaN one gets 0.
    assert close(group_advantages(torch.tensor([1.0, math.nan, 0.0, 0.0]), 4, scale_rewards="rloo"),
                 [1.0, 0.0, -0.5, -0.5])
    # A single valid reward has no baseline: 0.
    assert close(group_advantages(torch.tensor([math.nan, 2.0]), 2, scale_rewards="rloo"), [0.0, 0.0])


def test_reinforce_pp_whitens_over_the_batch_without_a_group_baseline() -> None:
    # [1, 0, 0 | 1, 1, 1]: μ = 4/6, Σ(x − μ)² = 4·(1/3)² + 2·(2/3)² = 12/9, σ² = (12/9)/5 = 4/15, σ = 0.5163978.
    # A(1) = (1/3)/σ = 0.6454972, A(0) = −(2/3)/σ = −1.2909944 — the all-1 group is not zeroed.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 3, scale_rewards="reinforce_pp", eps=0.0)
    assert close(adv, [0.6454972, -1.2909944, -1.2909944, 0.6454972, 0.6454972, 0.6454972])


def test_reinforce_pp_weighs_rollouts_by_their_tokens() -> None:
    # Rewards [1, 0] with 3 and 1 tokens: the batch's tokens are 1, 1, 1, 0: μ = 3/4,
    # σ² = (3·(1/4)² + (3/4)²) / 3 = 1/4, σ = 1/2 → A = (1/4)/(1/2) = 0.5 and (−3/4)/(1/2) = −1.5.
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, scale_rewards="reinforce_pp", eps=0.0,
                           token_counts=torch.tensor([3, 1]))
    assert close(adv, [0.5, -1.5])
    assert {"reinforce_pp", "reinforce_pp_baseline"} <= TOKEN_WEIGHTED_ESTIMATORS


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens() -> None:
    # Groups [1, 0] and [1, 1]: centred 0.5, −0.5, 0, 0; batch mean 0, σ² = 0.5 / 3 = 1/6, σ = 0.4082483
    # → A = ±0.5/σ = ±1.2247449 and 0, 0.
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, scale_rewards="reinforce_pp_baseline", eps=0.0)
    assert close(adv, [1.2247449, -1.2247449, 0.0, 0.0])
    # ε = 0.5 is added to σ: 0.5 / (0.4082483 + 0.5) = 0.5505103.
    with_eps = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, scale_rewards="reinforce_pp_baseline",
                                eps=0.5)
    assert with_eps[0].item() == pytest.approx(0.5505103, abs=1e-6)


def verl_masked_whiten(scores: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """veRL's outcome REINFORCE++ advantage, written from verl/trainer/ppo/core_algos.py
    (compute_reinforce_plus_plus_outcome_advantage, γ = 1) and verl/utils/torch_functional.py
    (masked_whiten): every token's return is its rollout's score; mean and unbiased variance over the
    batch's response tokens; (x − mean) · rsqrt(var + 1e-8). Returns each rollout's first token."""
    width = max(lengths)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).double()
    returns = scores.double().unsqueeze(1) * mask
    mean = (returns * mask).sum() / mask.sum()
    var = (((returns - mean) ** 2) * mask).sum() / mask.sum() * (mask.sum() / (mask.sum() - 1))
    return ((returns - mean) * torch.rsqrt(var + 1e-8))[:, 0]


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_matches_verl_formula(estimator: str) -> None:
    rewards = torch.tensor([0.3, 1.0, 0.0, 0.8, 0.5, 0.1])
    lengths = [5, 2, 7, 3, 3, 6]
    scores = rewards
    if estimator == "reinforce_pp_baseline":  # veRL subtracts each group's mean score first
        scores = rewards - rewards.view(-1, 3).mean(dim=1).repeat_interleave(3)
    expected = verl_masked_whiten(scores, lengths)
    ours = group_advantages(rewards, 3, scale_rewards=estimator, eps=0.0, token_counts=torch.tensor(lengths))
    assert torch.allclose(ours.double(), expected, atol=1e-6)


def test_advantage_epsilon_is_added_to_the_std_in_batch_scaling() -> None:
    # [1, 2, 3, 4]: centred ±0.5, ±1.5; σ_B² = 5/3, σ_B = 1.2909944; ε = 0.25: 1.5 / 1.5409944 = 0.9733971.
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 4, scale_rewards="batch", eps=0.25)
    assert adv[3].item() == pytest.approx(0.9733971, abs=1e-6)


def test_kl_in_the_reward_subtracts_beta_times_the_summed_kl() -> None:
    # Rollout 0: KL 0.1 + 0.2 on its counted tokens (the 9 is padding), rollout 1: 0.3; β = 0.5:
    # r = [1 − 0.15, 0 − 0.15] = [0.85, −0.15]; a NaN reward stays NaN.
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    out = kl_penalised_rewards(torch.tensor([1.0, 0.0, math.nan]), kl, mask, 0.5)
    assert out[:2].tolist() == pytest.approx([0.85, -0.15]) and math.isnan(out[2].item())


# ---------------------------------------------------------------- truncation and rollout IS


def test_truncated_completions_end_without_an_eos_and_leave_the_loss() -> None:
    # EOS = 2. Row 0 ends with its EOS (length 3); row 1 fills all 4 columns without one; row 2 is the
    # bare EOS; row 3 is empty.
    ids = torch.tensor([[5, 9, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    truncated = truncated_completions(ids, mask, [2])
    assert truncated.tolist() == [False, True, False, False]
    assert mask_truncated(mask, truncated).tolist() == [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert truncated_completions(ids, mask, [8, 2]).tolist() == [False, False, False, False]


def test_rollout_is_weights_are_truncated_ratios() -> None:
    # log π_old − log π_vllm = log 2, log 5, NaN (not captured), log 9 on a masked token:
    # w = [2, min(5, 3) = 3, 1, 1].
    old = torch.zeros(1, 4)
    rollout = torch.tensor([[-math.log(2.0), -math.log(5.0), math.nan, -math.log(9.0)]])
    weights = rollout_is_weights(old, rollout, torch.tensor([[1, 1, 1, 0]]), cap=3.0)
    assert weights[0].tolist() == pytest.approx([2.0, 3.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="rollout_is_cap"):
        rollout_is_weights(old, rollout, torch.ones(1, 4), cap=0.0)


def test_rollout_is_weights_scale_the_policy_term_only() -> None:
    # On-policy, A = 1 → surrogate −1 per token; weights [2, 3]; β = 0.5 with k1 = log 2 on both tokens:
    # ℓ = [−2 + 0.3465736, −3 + 0.3465736], bnpo mean = −2.5 + 0.3465736 = −2.1534264.
    logp = torch.full((1, 2), math.log(0.5))
    out = grpo_policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 2), loss_type="bnpo", beta=0.5,
                           ref_logp=torch.full((1, 2), math.log(0.25)), kl_estimator="k1",
                           is_weights=torch.tensor([[2.0, 3.0]]))
    assert out.loss.item() == pytest.approx(-2.1534264, abs=1e-6)
    assert out.metrics["rollout_is_weight_mean"] == 2.5

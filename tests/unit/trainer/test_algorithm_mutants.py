"""The trainer's algorithms at their edges, written against mutmut's surviving mutants (issue 23, item 1).

Every expected value is worked out by hand in the comment beside it, never recomputed with the code
under test. The mutants these kill are named in the test's docstring; those no test can kill are in
docs/mutation_equivalents.md with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

from trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_CLAMP,
    LOSS_AGGREGATIONS,
    TOKEN_WEIGHTED_ESTIMATORS,
    AggregationContext,
    aggregate_loss,
    cispo_clip_fractions,
    clip_fractions,
    entropy_bonus,
    group_advantages,
    group_view,
    grpo_policy_loss,
    informative_groups,
    kl_divergence,
    kl_penalised_rewards,
    loss_aggregation,
    masked_mean,
    nan_std,
    overlong_penalty,
    register_estimator,
    rewards_tensor,
    rollout_is_weights,
    token_logprobs,
    truncated_completions,
    zero_std_group_fraction,
)
from trainer.algorithms.ih_grpo import (
    TurnDecision,
    auto_print_last_expression,
    c_loss,
    c_term,
    clamped_tool_prob,
    delayed_call_count,
    delayed_turn,
    gamed_turn,
    immediate_turn,
    log_partition_without_tool,
    no_tool_turn,
    tool_token_terms,
)
from trainer.occ import (
    MtpConfig,
    MtpSettings,
    masked_inner,
    mtp_acceptance,
    mtp_ce_loss,
    mtp_loss,
    occ_coefficient,
)

F32_ULP_AT_1 = 2.0 ** -23  # the gap between 1.0 and the next float32


# --- advantages.py -------------------------------------------------------------------------------


def test_rewards_tensor_from_a_tensor_is_a_flat_float32_copy() -> None:
    """rewards_tensor mutants 1–5: a tensor input is detached, cast to float32, copied and flattened."""
    source = torch.tensor([[1, 2], [3, 4]])  # int64, 2-D
    out = rewards_tensor(source, statuses=["ok", "timeout", "ok", "ok"])
    assert out.dtype == torch.float32 and out.shape == (4,)
    assert out[[0, 2, 3]].tolist() == [1.0, 3.0, 4.0] and math.isnan(out[1].item())
    assert source.tolist() == [[1, 2], [3, 4]]  # the caller's tensor is untouched
    single = torch.tensor([[0.5]])
    assert rewards_tensor(single).shape == (1,)


def test_rewards_tensor_from_a_list_is_float32_whatever_the_default_dtype() -> None:
    """rewards_tensor mutants 8, 10: the list branch names float32 itself."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = rewards_tensor([0.25, None])
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == torch.float32
    assert out[0].item() == 0.25 and math.isnan(out[1].item())


def test_group_size_one_is_allowed_and_zero_is_named() -> None:
    """group_view mutants 1–3: G = 1 is a valid group size (each rollout alone: advantage 0)."""
    assert group_view(torch.tensor([1.0, 2.0, 3.0]), 1).shape == (3, 1)
    # One rollout per group: A = r − mean = 0 for every rollout.
    assert group_advantages(torch.tensor([1.0, 2.0]), 1, scale_rewards="none").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"^group_size must be at least 1, got 0$"):
        group_view(torch.tensor([1.0]), 0)


def test_advantages_are_computed_in_float64_and_returned_in_the_rewards_dtype() -> None:
    """group_advantages mutants 6, 14, 27: float64 inside, the rewards' dtype outside.

    Rewards 1 and 1 + 2⁻²³ (one float32 step apart): the mean 1 + 2⁻²⁴ exists in float64 only, so
    A = r − mean = ∓2⁻²⁴ exactly; in float32 the mean would round to 1 and give (0, 2⁻²³).
    """
    rewards = torch.tensor([1.0, 1.0 + F32_ULP_AT_1])
    adv = group_advantages(rewards, 2, scale_rewards="none")
    assert adv.dtype == torch.float32
    assert adv.tolist() == [-(2.0 ** -24), 2.0 ** -24]
    assert group_advantages(rewards.double(), 2, scale_rewards="none").dtype == torch.float64


def test_integer_rewards_give_float32_advantages() -> None:
    """group_advantages mutant 8: an integer reward tensor gives float32 advantages, not integers."""
    adv = group_advantages(torch.tensor([0, 1, 1, 1]), 2, scale_rewards="none")
    # Groups [0, 1] (mean 0.5) and [1, 1] (mean 1): A = [−0.5, 0.5, 0, 0].
    assert adv.dtype == torch.float32 and adv.tolist() == [-0.5, 0.5, 0.0, 0.0]


def test_nan_std_over_everything_is_a_scalar() -> None:
    """nan_std mutants 7, 39: without ``dim`` the result is 0-dimensional."""
    std = nan_std(torch.tensor([[1.0, 3.0], [float("nan"), 5.0]]))
    # Valid 1, 3, 5: mean 3, Σ(x − 3)² = 4 + 0 + 4 = 8, n − 1 = 2 → √4 = 2.
    assert std.shape == () and std.item() == 2.0


def test_zero_std_group_fraction_counts_the_constant_groups() -> None:
    """zero_std_group_fraction mutants 10, 14: integer rewards work; the share is of σ = 0 groups."""
    # Groups [1, 1] (σ 0), [0, 1] (σ > 0), [0, 0] (σ 0): 2 of 3.
    assert zero_std_group_fraction(torch.tensor([1, 1, 0, 1, 0, 0]), 2) == 2 / 3


def test_an_estimator_is_not_token_weighted_unless_it_says_so() -> None:
    """register_estimator mutant 1: ``token_weighted`` defaults to False."""

    def first_reward(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
        return grouped - grouped[:, :1]

    register_estimator("test_double_first_reward")(first_reward)
    try:
        assert "test_double_first_reward" in ADVANTAGE_ESTIMATORS
        assert "test_double_first_reward" not in TOKEN_WEIGHTED_ESTIMATORS
    finally:
        ADVANTAGE_ESTIMATORS.remove("test_double_first_reward")
        TOKEN_WEIGHTED_ESTIMATORS.discard("test_double_first_reward")
    assert {"reinforce_pp", "reinforce_pp_baseline"} <= TOKEN_WEIGHTED_ESTIMATORS
    assert not TOKEN_WEIGHTED_ESTIMATORS & {"group", "batch", "none", "rloo"}


def test_reinforce_pp_with_one_valid_reward_is_exactly_zero() -> None:
    """_whiten mutant 31: μ = Σwx / max(Σw, 1e-12) — with Σw = 1 it is x itself, so A = 0 exactly.

    One valid reward 3 (weight 1): μ = 3, σ = 0 (Σw = 1, no spread), A = (3 − 3) / (0 + 1e-4) = 0.
    """
    rewards = torch.tensor([float("nan"), 3.0], dtype=torch.float64)
    assert group_advantages(rewards, 2, scale_rewards="reinforce_pp").tolist() == [0.0, 0.0]


def test_reinforce_pp_with_two_rewards_uses_the_unbiased_variance() -> None:
    """_whiten mutants 41, 50: Σw = 2 → σ² = Σw(x − μ)² / (2 − 1), σ used (Σw > 1).

    Rewards 0, 2 (weight 1 each): μ = 1, σ² = (1 + 1) / 1 = 2, A = ∓1 / √2 with ε = 0.
    """
    rewards = torch.tensor([0.0, 2.0], dtype=torch.float64)
    adv = group_advantages(rewards, 2, scale_rewards="reinforce_pp", eps=0.0)
    assert adv[0].item() == pytest.approx(-1 / math.sqrt(2), rel=1e-15, abs=0.0)
    assert adv[1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-15, abs=0.0)


def test_kl_penalised_rewards_keep_the_rewards_dtype_and_sum_kl_in_its_own() -> None:
    """kl_penalised_rewards mutants 3, 6: the KL is summed in its own dtype, the result is the rewards'.

    float32 KL [2²⁴, 1] summed in float32 is 2²⁴ (2²⁴ + 1 rounds to even), whatever the mask's dtype;
    r − β·Σ = 0.5 − 1·2²⁴ = −16777215.5 in float64.
    """
    rewards = torch.tensor([0.5], dtype=torch.float64)
    kl = torch.tensor([[2.0 ** 24, 1.0]], dtype=torch.float32)
    mask = torch.ones(1, 2, dtype=torch.float64)
    out = kl_penalised_rewards(rewards, kl, mask, beta=1.0)
    assert out.dtype == torch.float64 and out.tolist() == [-16777215.5]
    # float32 rewards stay float32 with a float64 KL: 1 − 0.5·(0.25 + 0.25) = 0.75.
    out32 = kl_penalised_rewards(torch.tensor([1.0]), torch.tensor([[0.25, 0.25]], dtype=torch.float64),
                                 torch.ones(1, 2), beta=0.5)
    assert out32.dtype == torch.float32 and out32.tolist() == [0.75]


# --- policy_loss.py ------------------------------------------------------------------------------


def f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_a_bf16_mask_counts_its_tokens_exactly() -> None:
    """aggregate_loss mutant 4: the mask is cast to the loss's dtype before it is summed.

    301 tokens of loss 1: bnpo = 301 / 301 = 1. (In bfloat16, 301 ones sum to 300: 8 bits of mantissa.)
    """
    loss = aggregate_loss(torch.ones(1, 301), torch.ones(1, 301, dtype=torch.bfloat16), "bnpo")
    assert loss.item() == 1.0


def test_dapo_divides_by_the_token_count_exactly() -> None:
    """batch_token_mean mutants 9, 10: N = 1 is not raised to 2, and N = 2²⁴ + 1 is not rounded to float32."""
    # One token of loss 3, N = 1 → 3.
    assert aggregate_loss(f64([[3.0]]), f64([[1.0]]), "dapo").item() == 3.0
    # A rollout batch of 16 777 217 tokens: 16 777 217 / 16 777 217 = 1 (float32 would make N 16 777 216).
    big = aggregate_loss(f64([[16777217.0]]), f64([[1.0]]), "dapo", num_items_in_batch=16777217)
    assert big.item() == 1.0


def test_dr_grpo_accepts_a_max_length_of_one_and_names_a_missing_one() -> None:
    """constant_normaliser mutants 4, 5, 7."""
    # Σ ℓ / (B · L) = (2 + 4) / (2 · 1) = 3.
    assert aggregate_loss(f64([[2.0], [4.0]]), f64([[1.0], [1.0]]), "dr_grpo", max_completion_length=1).item() == 3.0
    message = r"^max_completion_length: the dr_grpo loss needs the max completion length \(a positive int\)$"
    with pytest.raises(ValueError, match=message):
        aggregate_loss(f64([[2.0]]), f64([[1.0]]), "dr_grpo", max_completion_length=0)


ENTROPY = f64([[1.0, 3.0], [2.0, 0.0]])
ENTROPY_MASK = f64([[1.0, 1.0], [1.0, 0.0]])  # Σ m·H = 1 + 3 + 2 = 6 over 3 tokens


def test_entropy_bonus_passes_the_normalisers_on() -> None:
    """entropy_bonus mutants 4, 9: dr_grpo's H̄ = Σ m H / (B · L) = 6 / (2 · 4) = 0.75."""
    assert entropy_bonus(ENTROPY, ENTROPY_MASK, "dr_grpo", max_completion_length=4).item() == 0.75
    # dapo with N = 12 tokens in the rollout batch: 6 / 12 = 0.5.
    assert entropy_bonus(ENTROPY, ENTROPY_MASK, "dapo", num_items_in_batch=12).item() == 0.5


def test_the_loss_subtracts_the_entropy_reduced_like_the_loss() -> None:
    """grpo_policy_loss mutants 118, 119, 123, 124: ratio 1 and A = 0 leave loss = −c · H̄.

    dr_grpo, L = 4: −0.5 · 0.75 = −0.375; dapo, N = 12: −0.5 · 0.5 = −0.25.
    """
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    advantages = torch.zeros(2, dtype=torch.float64)
    common: dict[str, Any] = {"entropy": ENTROPY, "entropy_coef": 0.5}
    dr = grpo_policy_loss(zeros, zeros, advantages, ENTROPY_MASK, loss_type="dr_grpo", max_completion_length=4,
                          **common)
    assert dr.loss.item() == -0.375
    dapo = grpo_policy_loss(zeros, zeros, advantages, ENTROPY_MASK, loss_type="dapo", num_items_in_batch=12,
                            **common)
    assert dapo.loss.item() == -0.25


def test_missing_inputs_are_named() -> None:
    """grpo_policy_loss mutants 69, 110: the exact messages."""
    zeros = torch.zeros(1, 1)
    with pytest.raises(ValueError, match=r"^ref_logp: beta is non-zero, so reference log-probs are required$"):
        grpo_policy_loss(zeros, zeros, torch.zeros(1), torch.ones(1, 1), beta=0.1)
    with pytest.raises(ValueError, match=r"^entropy: entropy_coef is non-zero, so per-token entropies are required$"):
        grpo_policy_loss(zeros, zeros, torch.zeros(1), torch.ones(1, 1), entropy_coef=0.1)


def test_cispo_clip_fractions_at_every_bound() -> None:
    """cispo_clip_fractions mutants 2, 6, 8, 9, 10, 27, 28, 34.

    ε_low = 0.25, ε_high = 0.5: bounds 0.75 and 1.5, strict. Counted ratios 0.5, 0.75, 1.5, 2 (the 3
    is masked): low {0.5} → 1/4, high {2} → 1/4, either → 2/4.
    """
    ratio = f64([[0.5, 0.75, 1.5, 2.0, 3.0]])
    mask = f64([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert cispo_clip_fractions(ratio, mask, eps_low=0.25, eps_high=0.5) == {
        "clip_fraction_low": 0.25, "clip_fraction_high": 0.25, "clip_fraction": 0.5}
    # No lower bound: only the 2 is clipped.
    assert cispo_clip_fractions(ratio, mask, eps_low=None, eps_high=0.5) == {
        "clip_fraction_low": 0.0, "clip_fraction_high": 0.25, "clip_fraction": 0.25}


def one_token(log_rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, old_logp) of one token with log π_θ = −1 and log ρ = ``log_rho``."""
    return f64([[-1.0]]), f64([[-1.0 - log_rho]])


def test_cispo_caps_the_weight_at_five_by_default() -> None:
    """grpo_policy_loss mutant 12: cispo_eps_high = 4, so the weight is at most 1 + 4 = 5.

    ρ = 6, A = 1, log π = −1: ℓ = −min(6, 5) · 1 · (−1) = 5; one token, N = 1 → loss 5.
    """
    logp, old = one_token(math.log(6.0))
    out = grpo_policy_loss(logp, old, f64([[1.0]])[0], f64([[1.0]]), loss_type="cispo")
    assert out.loss.item() == pytest.approx(5.0, rel=1e-12)
    assert out.metrics["clip_fraction_high"] == 1.0


def test_cispo_lower_bound_reaches_the_surrogate_and_the_metrics() -> None:
    """grpo_policy_loss mutants 35, 126, 127, 131, 157.

    ρ = 0.5, A = −1, log π = −1. With cispo_eps_low = 0.25 the weight is clip(0.5, 0.75, 5) = 0.75:
    ℓ = −0.75 · (−1) · (−1) = −0.75, and the token counts as clipped low. With no lower bound (the
    default) the weight is 0.5, ℓ = −0.5, and nothing is clipped — whereas the PPO clip fractions
    (ε_low = 0.2: 0.5 < 0.8 with A < 0) would count it.
    """
    logp, old = one_token(math.log(0.5))
    advantages = f64([[-1.0]])[0]
    bounded = grpo_policy_loss(logp, old, advantages, f64([[1.0]]), loss_type="cispo", cispo_eps_low=0.25)
    assert bounded.loss.item() == pytest.approx(-0.75, rel=1e-12)
    assert bounded.per_token_loss.tolist() == [[pytest.approx(-0.75, rel=1e-12)]]
    assert bounded.metrics["clip_fraction_low"] == 1.0 and bounded.metrics["clip_fraction"] == 1.0
    unbounded = grpo_policy_loss(logp, old, advantages, f64([[1.0]]), loss_type="cispo")
    assert unbounded.loss.item() == pytest.approx(-0.5, rel=1e-12)
    assert unbounded.metrics["clip_fraction_low"] == 0.0 and unbounded.metrics["clip_fraction"] == 0.0


def test_the_kl_term_is_clamped_by_default() -> None:
    """grpo_policy_loss mutants 76, 81: k3 of ref − logp = 5 is e⁵ − 5 − 1 ≈ 142.4, clamped to 10.

    Ratio 1, A = 0, β = 1, no ratio on the KL: ℓ = 10, one token → loss 10.
    """
    logp = f64([[-6.0]])
    out = grpo_policy_loss(logp, logp, f64([[0.0]])[0], f64([[1.0]]), beta=1.0, ref_logp=f64([[-1.0]]),
                           kl_times_ratio=False)
    assert KL_CLAMP == 10.0
    assert out.metrics["kl"] == 10.0 and out.loss.item() == 10.0


def test_the_log_ratio_clamp_reaches_the_kl() -> None:
    """grpo_policy_loss mutants 75, 80: k1 of logp − ref = 30 is clamped to the log-ratio bound 20."""
    logp = f64([[-1.0]])
    out = grpo_policy_loss(logp, logp, f64([[0.0]])[0], f64([[1.0]]), beta=1.0, ref_logp=f64([[-31.0]]),
                           kl_times_ratio=False, kl_estimator="k1", kl_clamp=None)
    assert out.metrics["kl"] == 20.0


def test_kl_divergence_defaults_to_k3_and_clamps_both_ways() -> None:
    """kl_divergence mutants 1, 2, 10, 13."""
    # k3 with ref − logp = −1: e⁻¹ − (−1) − 1 = e⁻¹.
    assert kl_divergence(f64([[0.0]]), f64([[-1.0]])).item() == pytest.approx(math.exp(-1), rel=1e-15)
    # k1 with logp − ref = 30, log-ratio clamp 20: 20; with −30: −20.
    assert kl_divergence(f64([[-1.0]]), f64([[-31.0]]), "k1", log_ratio_clamp=20.0).item() == 20.0
    assert kl_divergence(f64([[-31.0]]), f64([[-1.0]]), "k1", log_ratio_clamp=20.0).item() == -20.0


def test_a_loss_aggregation_registers_with_its_flags() -> None:
    """loss_aggregation mutants 1, 2, 3, 9, 10, 12, 13: defaults False / "clip", and both flags kept."""

    def total(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
        return masked.sum()

    loss_aggregation("test_double_plain")(total)
    loss_aggregation("test_double_flagged", global_token_mean=True, objective="cispo")(total)
    try:
        plain, flagged = LOSS_AGGREGATIONS.get("test_double_plain"), LOSS_AGGREGATIONS.get("test_double_flagged")
        assert (plain.reduce, plain.global_token_mean, plain.objective) == (total, False, "clip")
        assert (flagged.global_token_mean, flagged.objective) == (True, "cispo")
    finally:
        LOSS_AGGREGATIONS.remove("test_double_plain")
        LOSS_AGGREGATIONS.remove("test_double_flagged")


def test_rollout_is_weights_clamp_the_log_ratio_both_ways() -> None:
    """rollout_is_weights mutants 13, 16, 17, 20: log(π_old / π_rollout) clamped to [−20, 20] by default."""
    one = f64([[1.0]])
    # log ratio 25 → clamped 20: e²⁰ = 485165195.4097903 (under the cap 1e12).
    up = rollout_is_weights(f64([[0.0]]), f64([[-25.0]]), one, cap=1e12)
    assert up.item() == pytest.approx(485165195.4097903, rel=1e-15)
    # log ratio −30 → clamped −20: e⁻²⁰ = 2.061153622438558e-09.
    down = rollout_is_weights(f64([[-30.0]]), f64([[0.0]]), one, cap=1e12)
    assert down.item() == pytest.approx(2.061153622438558e-09, rel=1e-15)
    # No clamp: e³⁰ = 10686474581524.463 (under the cap 1e14).
    free = rollout_is_weights(f64([[0.0]]), f64([[-30.0]]), one, cap=1e14, log_ratio_clamp=None)
    assert free.item() == pytest.approx(10686474581524.463, rel=1e-15)


def test_rollout_is_weights_take_any_positive_cap_and_the_log_probs_dtype() -> None:
    """rollout_is_weights mutants 2, 11: a cap below 1 is allowed; the weights are in the log-probs' dtype."""
    # ρ = 1, cap 0.5 → 0.5.
    assert rollout_is_weights(f64([[0.0]]), f64([[0.0]]), f64([[1.0]]), cap=0.5).item() == 0.5
    with pytest.raises(ValueError, match=r"^rollout_is_cap must be positive, got 0$"):
        rollout_is_weights(f64([[0.0]]), f64([[0.0]]), f64([[1.0]]), cap=0)
    weights = rollout_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.float64), cap=2.0)
    assert weights.dtype == torch.float32 and weights.item() == 1.0


# --- dapo.py -------------------------------------------------------------------------------------


def test_dynamic_sampling_takes_integer_rewards() -> None:
    """informative_groups mutant 9: groups [1, 1] (no spread) and [0, 1] (spread)."""
    assert informative_groups(torch.tensor([1, 1, 0, 1]), 2).tolist() == [False, True]


def test_overlong_penalty_is_computed_in_float64_and_returned_in_float32() -> None:
    """overlong_penalty mutants 11, 16.

    L_max = 14, L_cache = 10, |y| = 7: R = −0.1 · (7 − 4) / 10 = −0.03, rounded once to float32
    (−0.029999999329447746); computed in float32 it would round twice and land one step away.
    """
    out = overlong_penalty(torch.tensor([7]), max_length=14, cache_length=10, factor=0.1)
    assert out.dtype == torch.float32
    assert out.tolist() == [-0.029999999329447746]


def test_overlong_penalty_bounds_and_messages() -> None:
    """overlong_penalty mutants 2, 3, 4, 6, 7: max_length ≥ 1, 0 < cache_length < max_length."""
    # L_max = 4, L_cache = 1: no penalty up to 3 tokens, −1 from 4 on.
    assert overlong_penalty(torch.tensor([3, 4, 5]), max_length=4, cache_length=1).tolist() == [0.0, -1.0, -1.0]
    with pytest.raises(ValueError, match=r"^max_length must be positive, got 0$"):
        overlong_penalty(torch.tensor([1]), max_length=0, cache_length=1)
    # max_length = 1 is positive: the error is about the cache, which has no room.
    with pytest.raises(ValueError, match=r"^cache_length must be in \(0, max_length=1\), got 1$"):
        overlong_penalty(torch.tensor([1]), max_length=1, cache_length=1)
    with pytest.raises(ValueError, match=r"^cache_length must be in \(0, max_length=4\), got 0$"):
        overlong_penalty(torch.tensor([1]), max_length=4, cache_length=0)


def test_a_one_token_completion_without_eos_is_truncated() -> None:
    """truncated_completions mutant 31: length 1, last token 5 (not the stop id 2) → truncated."""
    ids = torch.tensor([[5, 0], [2, 0], [0, 0]])
    mask = torch.tensor([[1, 0], [1, 0], [0, 0]])
    # [5]: cut; [2]: finished with EOS; []: empty, not truncated.
    assert truncated_completions(ids, mask, [2]).tolist() == [True, False, False]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the stop ids' device only matters off the CPU")
def test_truncated_completions_on_cuda() -> None:
    """truncated_completions mutants 25, 28: the stop ids are put on the completions' device."""
    ids = torch.tensor([[5, 2], [5, 6]], device="cuda")
    mask = torch.ones(2, 2, device="cuda")
    assert truncated_completions(ids, mask, [2, 3]).tolist() == [False, True]


# --- stats.py ------------------------------------------------------------------------------------


def test_clip_fractions_count_only_strictly_outside_with_the_matching_sign() -> None:
    """clip_fractions mutants 8, 11, 12, 18.

    ε_low = 0.25, ε_high = 0.5 (bounds 0.75 and 1.5). Tokens (ρ, A): (0.75, −1) on the bound, (0.5, 0)
    and (2, 0) with no advantage, (0.5, 0.5) below with A > 0: none is clipped. Then (0.5, −1) is low
    and (2, 1) is high.
    """
    ratio = f64([[0.75], [0.5], [2.0], [0.5]])
    advantages = torch.tensor([-1.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    mask = torch.ones(4, 1)
    assert clip_fractions(ratio, advantages, mask, eps_low=0.25, eps_high=0.5) == {
        "clip_fraction_low": 0.0, "clip_fraction_high": 0.0, "clip_fraction": 0.0}
    both = clip_fractions(f64([[0.5], [2.0]]), torch.tensor([-1.0, 1.0]), torch.ones(2, 1), eps_low=0.25, eps_high=0.5)
    assert both == {"clip_fraction_low": 0.5, "clip_fraction_high": 0.5, "clip_fraction": 1.0}


def test_masked_mean_keeps_the_values_dtype_and_weighs_by_the_mask() -> None:
    """masked_mean mutants 2, 3, 4."""
    # bfloat16 values [1, 2, 3] with mask [1, 1, 0]: (1 + 2) / 2 = 1.5, still bfloat16.
    mean = masked_mean(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), torch.tensor([1.0, 1.0, 0.0]))
    assert mean.dtype == torch.bfloat16 and mean.item() == 1.5
    # Boolean values with a weighted mask: Σ v·m / Σ m = (1 · 0.5 + 0 · 1.5) / 2 = 0.25.
    assert masked_mean(torch.tensor([True, False]), torch.tensor([0.5, 1.5])).item() == 0.25


def test_token_logprobs_rejects_a_zero_temperature_by_name() -> None:
    """token_logprobs mutants 2, 4."""
    with pytest.raises(ValueError, match=r"^temperature must be positive, got 0$"):
        token_logprobs(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0)


# --- ih_grpo.py ----------------------------------------------------------------------------------


def block(code: str) -> str:
    return f"```python\n{code}\n```"


def test_display_and_pprint_only_blocks_game_the_count() -> None:
    """_logic_lines mutants 18–21: a block that only calls display( or pprint( after code is split off."""
    for call in ("display(x)", "pprint(x)"):
        assert gamed_turn(block("x = 1") + "\nand now\n" + block(call)), call


def test_duplicates_that_differ_only_in_spaces_game_the_count() -> None:
    """_logic_lines mutant 4: whitespace is removed, not replaced, before blocks are compared."""
    assert gamed_turn(block("x = 1") + "\nagain\n" + block("x=1"))


def test_a_print_only_first_block_does_not_end_the_duplicate_check() -> None:
    """gamed_turn mutant 20: after a print-only first block, a later duplicate is still found."""
    assert gamed_turn(block("print(1)") + "\nthen\n" + block("x = 1") + "\nthen\n" + block("x = 1"))


def test_a_block_repeating_any_earlier_block_games_the_count() -> None:
    """gamed_turn mutant 26: earlier statements accumulate — {a}, {b}, then {a} again is a duplicate."""
    assert gamed_turn(block("a = 1") + "\nthen\n" + block("b = 2") + "\nthen\n" + block("a = 1"))
    assert not gamed_turn(block("a = 1") + "\nthen\n" + block("b = 2"))


def test_a_single_block_never_games_the_count() -> None:
    """gamed_turn mutant 6: fewer than two blocks return False (even an empty one)."""
    assert not gamed_turn(block(""))


def test_only_the_text_before_the_first_marker_counts() -> None:
    """delayed_call_count mutant 3, delayed_turn mutant 3: partition at the first <tool_call>."""
    text = block("a = 1") + "\nnext\n" + block("b = 2") + "<tool_call>" + block("c = 3") + "<tool_call>"
    # Before the first marker: two distinct blocks → 2 − 1 = 1 delayed call, code "a = 1" + "b = 2".
    assert delayed_call_count(text) == 1
    assert delayed_turn(text) == TurnDecision(code="a = 1\n\nb = 2\n", done=False, blocks=2, delayed_calls=1)


def test_turn_decisions_in_full() -> None:
    """delayed_turn 11, 21, 24; immediate_turn 3, 7, 10, 13, 14, 17, 20; no_tool_turn 2, 5."""
    answer = block("x = 1") + "\nso \\boxed{1}"
    assert delayed_turn(answer) == TurnDecision(code=None, done=True, blocks=1)
    assert immediate_turn(answer) == TurnDecision(code=None, done=True, blocks=1)
    two = block("a = 1") + "\nthen\n" + block("b = 2")
    # immediate: the turn ended at the last block's fence, which runs alone.
    assert immediate_turn(two) == TurnDecision(code="b = 2\n", done=False, blocks=2)
    assert no_tool_turn(two) == TurnDecision(code=None, done=True, blocks=2)


def test_a_multi_line_final_expression_is_printed_whole() -> None:
    """auto_print_last_expression mutants 20, 36: the expression's last line and what follows it."""
    assert auto_print_last_expression("x = 1\n(x +\n 2)") == "x = 1\nprint((x +\n 2))"
    assert auto_print_last_expression("1 + 1\n# done") == "print(1 + 1)\n# done"


def test_the_tool_probability_clamps() -> None:
    """clamped_tool_prob mutants 7, 8, 10, 11: p ∈ [p_min, p_max], by default [1e-7, 1 − 1e-7]."""
    _, low = clamped_tool_prob(f64([[-100.0]]))
    assert low.item() == 1e-7
    logp, high = clamped_tool_prob(f64([[0.0]]))
    # log p ≤ −1e-7, and exp(−1e-7) = 0.9999999000000050 is clamped to 1 − 1e-7.
    assert logp.item() == -1e-7 and high.item() == 1 - 1e-7
    _, capped = clamped_tool_prob(f64([[math.log(0.9)]]), p_max=0.5)
    assert capped.item() == 0.5


# Three settings where a clamp bites, with z_tool = 0 and log Z = −log p + log(1 − p):
# p_min = 0.2, log p = ln 0.1: p = 0.2, log Z = ln 10 + ln 0.8.
# p_max = 0.5, log p = ln 0.9: p = 0.5, log Z = −ln 0.9 + ln 0.5.
# logp_max = ln 0.25, log p = ln 0.5: log p → ln 0.25, p = 0.25, log Z = ln 4 + ln 0.75 = ln 3.
CLAMPED = [
    ({"p_min": 0.2}, math.log(0.1), 0.2, math.log(10) + math.log(0.8)),
    ({"p_max": 0.5}, math.log(0.9), 0.5, -math.log(0.9) + math.log(0.5)),
    ({"logp_max": math.log(0.25)}, math.log(0.5), 0.25, math.log(3)),
]


@pytest.mark.parametrize(("clamps", "tool_logp", "p", "log_z"), CLAMPED)
def test_every_clamp_reaches_log_z_and_the_c_term(clamps: dict[str, float], tool_logp: float, p: float,
                                                  log_z: float) -> None:
    """log_partition_without_tool 4, 5, 7–9; c_term 11, 20; c_loss 10, 11, 16–18.

    c_t = (γ − 1[y ≠ tool]) · log Z · ℓ with γ = 1 − p, y the tool token (non_tool 0) and ℓ = 1.
    """
    logit, logp = f64([[0.0]]), f64([[tool_logp]])
    assert log_partition_without_tool(logit, logp, **clamps).item() == pytest.approx(log_z, rel=1e-12)
    expected = (1 - p) * log_z
    assert c_term(logit, logp, f64([[0.0]]), f64([[1.0]]), **clamps).item() == pytest.approx(expected, rel=1e-12)
    assert c_loss(logit, logp, f64([[0.0]]), f64([[1.0]]), f64([[1.0]]), **clamps).item() == pytest.approx(
        expected, rel=1e-12)


def test_c_loss_counts_a_bf16_mask_exactly_and_c_term_keeps_the_dtype() -> None:
    """c_loss mutant 2, c_term mutant 24.

    301 tokens, each with log p = ln 0.25 (p = 0.25, log Z = ln 3), the tool token, ℓ = 1:
    c = 0.75 · ln 3 each, mean 0.75 · ln 3 over 301 (a bfloat16 sum of 301 ones is 300).
    """
    logit = torch.zeros(1, 301, dtype=torch.float64)
    logp = torch.full((1, 301), math.log(0.25), dtype=torch.float64)
    zeros, ones = torch.zeros_like(logit), torch.ones_like(logit)
    loss = c_loss(logit, logp, zeros, ones, torch.ones(1, 301, dtype=torch.bfloat16))
    assert loss.item() == pytest.approx(0.75 * math.log(3), rel=1e-12)
    term = c_term(torch.zeros(1, 1), torch.full((1, 1), math.log(0.25)), torch.zeros(1, 1, dtype=torch.float64),
                  torch.ones(1, 1))
    assert term.dtype == torch.float32


def test_tool_token_terms_divide_by_the_temperature_in_float32() -> None:
    """tool_token_terms mutants 3, 4: logits [2, 0] at τ = 2 → [1, 0]: z = 1, log p = 1 − ln(e + 1)."""
    logits = torch.tensor([[[2.0, 0.0]]], dtype=torch.bfloat16)
    z, logp = tool_token_terms(logits, tool_id=0, positions=1, temperature=2.0)
    assert z.dtype == torch.float32 and logp.dtype == torch.float32
    assert z.item() == 1.0
    assert logp.item() == pytest.approx(1 - math.log(math.e + 1), rel=1e-6)


# --- occ.py --------------------------------------------------------------------------------------


class _RunWithoutIterations(BaseModel):
    """A run config double that has no num_iterations field: the schedule check assumes 1."""

    mini_batches: int = 1
    mtp: MtpConfig = None


class _Run(BaseModel):
    mini_batches: int = 1
    num_iterations: int = 1
    mtp: MtpConfig = None


def test_the_schedule_check_reads_num_iterations_or_assumes_one() -> None:
    """_schedule_after mutants 6, 7, 9–13, 19."""
    # 1 mini-batch × 2 iterations = 2 optimizer steps: allowed.
    assert _Run.model_validate({"mini_batches": 1, "num_iterations": 2, "mtp": {"regime": "occ"}}).mtp is not None
    # No num_iterations field: 1 × 1 < 2, refused.
    with pytest.raises(ValidationError, match="mini_batches ≥ 2"):
        _RunWithoutIterations.model_validate({"mini_batches": 1, "mtp": {"regime": "occ"}})
    # A bad mini_batches is reported as itself, and the schedule is not checked.
    with pytest.raises(ValidationError) as caught:
        _Run.model_validate({"mini_batches": "many", "mtp": {"regime": "occ"}})
    assert [e["loc"] for e in caught.value.errors()] == [("mini_batches",)]


def test_masked_inner_keeps_nan_padding_out_of_both_factors() -> None:
    """masked_inner mutant 21: b's padding is NaN too; ⟨[1, 5], [2, NaN]⟩ with mask [1, 0] = 2."""
    assert masked_inner(f64([[1.0, 5.0]]), f64([[2.0, math.nan]]), f64([[1.0, 0.0]])).item() == 2.0


def test_the_occ_coefficient_adds_eps_to_the_norm() -> None:
    """occ_coefficient mutant 24: δ_RL = δ_MTP = 1e-4 → ⟨⟩ = ‖‖² = 1e-8, λ = 1e-8 / (1e-8 + 1e-8) = 0.5."""
    delta = f64([[1e-4]])
    assert occ_coefficient(delta, delta, f64([[1.0]])).coefficient.item() == pytest.approx(0.5, rel=1e-12)


def test_acceptance_counts_hits() -> None:
    """mtp_acceptance mutant 3: 3 hits of 4 → 0.75."""
    assert mtp_acceptance(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 0]]), torch.ones(1, 4)) == 0.75


def test_mtp_ce_loss_passes_the_normalisers_on() -> None:
    """mtp_ce_loss mutants 6, 7, 11, 12: CE = Σ −log q / (B · L) for dr_grpo, / N for dapo."""
    mtp_logp = f64([[-1.0, -3.0]])
    assert mtp_ce_loss(mtp_logp, f64([[1.0, 1.0]]), loss_type="dr_grpo", max_completion_length=4).item() == 1.0
    assert mtp_ce_loss(mtp_logp, f64([[1.0, 1.0]]), num_items_in_batch=8).item() == 0.5


def mtp_inputs(log_rho: float, advantage: float = -1.0) -> dict[str, Any]:
    """One token: main head unchanged (δ_RL = 0), MTP head at log ρ' = ``log_rho`` from the old log-prob."""
    old = f64([[-2.0]])
    return {"logp": old.clone(), "old_logp": old, "mtp_logp": old + log_rho, "advantages": f64([[advantage]])[0],
            "mask": f64([[1.0]])}


def test_the_policy_regime_metrics_in_full() -> None:
    """mtp_loss mutants 3, 92–94, 96, 98, 99, 104, 105, 113, 114, 124–135.

    λ = 0.1, A = −1 → A' = −0.1; ρ' = 0.5 < 1 − 0.2 (the default ε_low): clipped to 0.8,
    ℓ = −min(0.5 · −0.1, 0.8 · −0.1) = 0.08; one token (dapo, N = 1) → loss 0.08. δ_RL = 0 → λ_occ = 0.
    CE = −log q = 2 − ln 0.5. Acceptance: 1 hit of 1.
    """
    settings = MtpSettings(regime="policy", **{"lambda": 0.1})
    out = mtp_loss(settings, **mtp_inputs(math.log(0.5)), mtp_top1=torch.tensor([[7]]), targets=torch.tensor([[7]]))
    assert out.coefficient == 0.1
    assert out.loss.item() == pytest.approx(0.08, rel=1e-12)
    assert out.metrics == {
        "mtp_lambda": 0.1, "mtp_lambda_occ": 0.0, "mtp_inner": 0.0, "mtp_norm_sq": pytest.approx(math.log(2) ** 2),
        "mtp_loss": pytest.approx(0.08, rel=1e-12), "mtp_ce": pytest.approx(2 + math.log(2), rel=1e-12),
        "mtp_ratio_mean": pytest.approx(0.5, rel=1e-12), "mtp_clip_fraction": 1.0, "mtp_acceptance": 1.0}
    # Only one of top-1 and targets: no acceptance.
    assert "mtp_acceptance" not in mtp_loss(settings, **mtp_inputs(math.log(0.5)), mtp_top1=torch.tensor([[7]])).metrics
    assert "mtp_acceptance" not in mtp_loss(settings, **mtp_inputs(math.log(0.5)), targets=torch.tensor([[7]])).metrics


def test_the_policy_regime_passes_every_loss_option_on() -> None:
    """mtp_loss mutants 65, 67, 72–75, 77, 78 (λ = 0.1 throughout, one token)."""
    settings = MtpSettings(regime="policy", **{"lambda": 0.1})
    # ε_low = 0.4: ρ' = 0.5 clipped to 0.6, ℓ = −min(−0.05, −0.06) = 0.06.
    assert mtp_loss(settings, **mtp_inputs(math.log(0.5)), eps_low=0.4).loss.item() == pytest.approx(0.06, rel=1e-12)
    # ε_high = 0.5, A = +1: ρ' = 1.4 is inside [0.8, 1.5], ℓ = −0.14 (0.28 would clip it to 1.28: −0.128).
    high = mtp_loss(settings, **mtp_inputs(math.log(1.4), advantage=1.0), eps_high=0.5)
    assert high.loss.item() == pytest.approx(-0.14, rel=1e-12)
    # Dual clip c = 3, A' = −0.1, ρ' = 10: ℓ = min(−min(−1, −0.128), 0.3) = 0.3.
    dual = mtp_loss(settings, **mtp_inputs(math.log(10.0)), dual_clip_c=3.0)
    assert dual.loss.item() == pytest.approx(0.3, rel=1e-12)
    # log-ratio clamp 0.5: log ρ' = ln 0.5 ≈ −0.69 → −0.5, ρ' = e^−0.5.
    clamped = mtp_loss(settings, **mtp_inputs(math.log(0.5)), log_ratio_clamp=0.5)
    assert clamped.metrics["mtp_ratio_mean"] == pytest.approx(math.exp(-0.5), rel=1e-12)
    # dr_grpo with L = 4: 0.08 / (1 · 4) = 0.02.
    dr = mtp_loss(settings, **mtp_inputs(math.log(0.5)), loss_type="dr_grpo", max_completion_length=4)
    assert dr.loss.item() == pytest.approx(0.02, rel=1e-12)


def test_the_ce_regime_passes_the_loss_type_on_and_occ_its_lambda_plus() -> None:
    """mtp_loss mutants 22, 48, 49."""
    ce = MtpSettings(regime="ce", **{"lambda": 0.5})
    # CE over dr_grpo, L = 4: (2 − ln 0.5) / 4, times λ = 0.5.
    out = mtp_loss(ce, **mtp_inputs(math.log(0.5)), loss_type="dr_grpo", max_completion_length=4)
    assert out.loss.item() == pytest.approx(0.5 * (2 + math.log(2)) / 4, rel=1e-12)
    # occ with λ₊ = 0.5: δ_RL = δ_MTP = 0.5 on one token → λ_t = 0.5 · 0.25 / (0.25 + 1e-8).
    occ = MtpSettings(regime="occ", lambda_plus=0.5)
    old = f64([[-2.0]])
    moved = mtp_loss(occ, logp=old + 0.5, old_logp=old, mtp_logp=old + 0.5, advantages=f64([[1.0]])[0],
                     mask=f64([[1.0]]))
    assert moved.metrics["mtp_lambda_occ"] == pytest.approx(0.5 * 0.25 / (0.25 + 1e-8), rel=1e-12)

"""Policy-loss pieces against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms import (
    aggregate_loss,
    clip_fractions,
    clipped_surrogate,
    entropy_from_logits,
    grpo_policy_loss,
    importance_weights,
    k3_kl,
    log_ratio,
    masked_mean,
    token_logprobs,
)

RATIOS = torch.tensor([[0.5, 1.0, 1.5]])


def test_log_ratio_and_token_level_weights() -> None:
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert log_ratio(logp, old).tolist() == [[0.5, -1.0]]
    weights = importance_weights(logp, old, torch.ones(1, 2))
    assert torch.allclose(weights, torch.tensor([[math.exp(0.5), math.exp(-1.0)]]))


def test_sequence_level_weight_is_the_exp_of_the_masked_mean_log_ratio() -> None:
    logp, old = torch.tensor([[0.1, 0.3, 99.0]]), torch.zeros(1, 3)
    weight = importance_weights(logp, old, torch.tensor([[1, 1, 0]]), level="sequence")
    assert weight.shape == (1, 1) and weight.item() == pytest.approx(math.exp(0.2))
    with pytest.raises(ValueError, match="importance_sampling_level"):
        importance_weights(logp, old, torch.ones(1, 3), level="word")  # type: ignore[arg-type]


def test_clipped_surrogate_with_clip_higher() -> None:
    # clip(ρ, 0.8, 1.28) = [0.8, 1.0, 1.28]
    positive = clipped_surrogate(RATIOS, torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    assert torch.allclose(positive, torch.tensor([[-0.5, -1.0, -1.28]]))  # −min(ρ, clip ρ)
    negative = clipped_surrogate(RATIOS, torch.tensor([-1.0]), eps_low=0.2, eps_high=0.28)
    assert torch.allclose(negative, torch.tensor([[0.8, 1.0, 1.5]]))  # max(ρ, clip ρ)


def test_dual_clip_caps_negative_advantages_only() -> None:
    ratios = torch.tensor([[1.5, 5.0]])
    capped = clipped_surrogate(ratios, torch.tensor([-2.0]), eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    assert torch.allclose(capped, torch.tensor([[3.0, 6.0]]))  # min(2·ρ, 3·2): 3 and 6 (capped from 10)
    positive = clipped_surrogate(ratios, torch.tensor([2.0]), eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    assert torch.allclose(positive, torch.tensor([[-2.56, -2.56]]))
    with pytest.raises(ValueError, match="dual_clip_c"):
        clipped_surrogate(ratios, torch.tensor([1.0]), eps_low=0.2, eps_high=0.2, dual_clip_c=1.0)


def test_per_token_advantages_are_accepted() -> None:
    loss = clipped_surrogate(torch.ones(1, 2), torch.tensor([[1.0, -2.0]]), eps_low=0.2, eps_high=0.2)
    assert loss.tolist() == [[-1.0, 2.0]]


def test_k3_kl() -> None:
    # ref − logp = log 0.5: 0.5 − log 0.5 − 1 = log 2 − 0.5
    kl = k3_kl(torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0]))
    assert kl[0].item() == pytest.approx(math.log(2) - 0.5) and kl[1].item() == 0.0


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(("loss_type", "kwargs", "expected"), [
    ("grpo", {}, (6 / 3 + 4 / 1) / 2),
    ("bnpo", {}, 10 / 4),
    ("dr_grpo", {"max_completion_length": 5}, 10 / (2 * 5)),
    ("dapo", {}, 10 / 4),
    ("dapo", {"num_items_in_batch": 20}, 10 / 20),
])
def test_aggregations(loss_type: str, kwargs: dict[str, int], expected: float) -> None:
    assert aggregate_loss(PER_TOKEN, MASK, loss_type, **kwargs).item() == pytest.approx(expected)  # type: ignore[arg-type]


def test_aggregation_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(PER_TOKEN, MASK, "ppo")  # type: ignore[arg-type]


def test_kl_times_ratio_changes_the_gradient_not_the_on_policy_value() -> None:
    # One token, on-policy (ρ = 1), A = 0, β = 1: loss = k3 = log 2 − 0.5 either way.
    # d k3/d logp = 1 − e^(ref−logp) = 0.5; with ρ: + k3 · dρ/dlogp = 0.5 + (log 2 − 0.5) = log 2.
    for kl_times_ratio, expected_grad in ((False, 0.5), (True, math.log(2))):
        logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
        out = grpo_policy_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 1), loss_type="grpo",
                               beta=1.0, ref_logp=torch.tensor([[math.log(0.25)]]), kl_times_ratio=kl_times_ratio)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(math.log(2) - 0.5)
        assert logp.grad is not None and logp.grad.item() == pytest.approx(expected_grad)
        assert out.metrics["kl"] == pytest.approx(math.log(2) - 0.5)


def test_beta_without_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), beta=0.1)


def test_policy_loss_metrics() -> None:
    logp = torch.log(torch.tensor([[0.5, 1.5, 1.0]]))
    out = grpo_policy_loss(logp, torch.zeros(1, 3), torch.tensor([-1.0]), torch.ones(1, 3), loss_type="bnpo")
    assert out.loss.item() == pytest.approx((0.8 + 1.5 + 1.0) / 3)
    assert out.metrics["clip_fraction_low"] == pytest.approx(1 / 3)
    assert out.metrics["clip_fraction_high"] == 0.0
    assert out.metrics["ratio_mean"] == pytest.approx(1.0)


def test_clip_fractions() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ratios = torch.tensor([[0.5, 1.5, 1.0], [1.5, 0.5, 9.0]])
    fractions = clip_fractions(ratios, torch.tensor([-1.0, 1.0]), mask, eps_low=0.2, eps_high=0.28)
    # low: row 0 token 0; high: row 1 token 0; row 1 token 2 is masked.
    assert fractions == pytest.approx({"clip_fraction_low": 0.2, "clip_fraction_high": 0.2, "clip_fraction": 0.4})


def test_masked_mean() -> None:
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(2.5)
    assert masked_mean(PER_TOKEN, MASK, dim=-1).tolist() == pytest.approx([2.0, 4.0])
    assert masked_mean(PER_TOKEN, torch.zeros_like(MASK)).item() == 0.0


def test_entropy_and_token_logprobs() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # p = [0.25, 0.75], then uniform
    entropy = entropy_from_logits(logits)
    assert entropy[0, 0].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert entropy[0, 1].item() == pytest.approx(math.log(2))
    logps = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert logps[0].tolist() == pytest.approx([math.log(0.75), math.log(0.5)])
    # τ = 2 halves the logits: p = softmax([0, log 3 / 2]) = [1, √3] / (1 + √3)
    assert token_logprobs(logits, torch.tensor([[1, 0]]), temperature=2.0)[0, 0].item() == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_clip_higher_leaves_ratios_between_the_two_bounds_unclipped() -> None:
    # ε_low = 0.2, ε_high = 0.28: ratios 1.25 and 1.28 lie in (1 + ε_low, 1 + ε_high], so with A > 0
    # clip-higher keeps their gradient; only 1.3 (> 1.28) is clipped. A clip at 1 + ε_low would count 3 of 4.
    mask = torch.ones(1, 4)
    ratios = torch.tensor([[1.25, 1.28, 1.3, 1.0]])
    fractions = clip_fractions(ratios, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.28)
    assert fractions == pytest.approx({"clip_fraction_low": 0.0, "clip_fraction_high": 0.25, "clip_fraction": 0.25})
    # The surrogate agrees: −min(ρA, clip(ρ)A) is −1.25, −1.28, −1.28 (clipped), −1.0.
    loss = clipped_surrogate(ratios, torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    assert torch.allclose(loss, torch.tensor([[-1.25, -1.28, -1.28, -1.0]]))


def test_clip_lower_uses_eps_low_for_negative_advantages() -> None:
    # With A < 0, ratio 0.75 lies in [1 − ε_high, 1 − ε_low) = [0.72, 0.8): clipped low at ε_low = 0.2 (0.75 < 0.8),
    # but it would not be if the low bound used ε_high (0.75 > 0.72).
    fractions = clip_fractions(torch.tensor([[0.75, 0.9]]), torch.tensor([-1.0]), torch.ones(1, 2),
                               eps_low=0.2, eps_high=0.28)
    assert fractions == pytest.approx({"clip_fraction_low": 0.5, "clip_fraction_high": 0.0, "clip_fraction": 0.5})


def test_policy_loss_reports_clip_fraction_high_in_the_clip_higher_band() -> None:
    logp = torch.log(torch.tensor([[1.25, 1.3]]))
    out = grpo_policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), loss_type="bnpo")
    # Defaults ε_low = 0.2, ε_high = 0.28: only 1.3 is clipped (to 1.28): loss = −(1.25 + 1.28) / 2.
    assert out.loss.item() == pytest.approx(-(1.25 + 1.28) / 2)
    assert out.metrics["clip_fraction_high"] == pytest.approx(0.5)

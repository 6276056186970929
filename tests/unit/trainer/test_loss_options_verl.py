"""The loss options against veRL's formulas (veRL is not installed: each reference below is written
independently from the cited function of volcengine/verl, verl/trainer/ppo/core_algos.py, read at
commit b178a3cd56f5), on random tensors with some extreme log-ratios."""

from __future__ import annotations

import torch

from trainer.algorithms import (
    aggregate_loss,
    cispo_surrogate,
    clipped_surrogate,
    group_advantages,
    importance_weights,
    kl_divergence,
)

B, T = 5, 7


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    old[0, 0], old[1, 1], old[2, 2] = logp[0, 0] - 30.0, logp[1, 1] + 30.0, logp[2, 2] - 25.0  # beyond ±20
    advantages = torch.randn(B, 1, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 6])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()
    return logp, old, advantages, mask


def verl_vanilla_pg_losses(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, low: float, high: float,
                           clip_ratio_c: float) -> torch.Tensor:
    """compute_policy_loss_vanilla: log-ratio clamped to [−20, 20], ratio, clip, dual clip where A < 0."""
    ratio = torch.exp(torch.clamp(logp - old, min=-20.0, max=20.0))
    losses1, losses2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clip1 = torch.maximum(losses1, losses2)
    clip2 = torch.min(-adv * clip_ratio_c, clip1)
    return torch.where(adv < 0, clip2, clip1)


def test_clamped_dual_clip_surrogate_matches_verl_vanilla() -> None:
    logp, old, adv, _ = batch(0)
    ratio = importance_weights(logp, old, torch.ones(B, T), log_ratio_clamp=20.0)
    ours = clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    assert torch.allclose(ours, verl_vanilla_pg_losses(logp, old, adv, 0.2, 0.28, 3.0), rtol=1e-12, atol=1e-9)


def test_cispo_matches_verl_cispo() -> None:
    # compute_policy_loss_cispo: −sg(clamp(ratio, 1 − low, 1 + high)) · A · log π, ratio from the
    # [−20, 20]-clamped log-ratio; veRL's example run uses clip_ratio_low=10 (no lower bound), high=0.2.
    logp, old, adv, _ = batch(1)
    verl_ratio = torch.exp(torch.clamp(logp - old, min=-20.0, max=20.0))
    expected = -torch.clamp(verl_ratio, 1 - 10.0, 1 + 0.2) * adv * logp
    ratio = importance_weights(logp, old, torch.ones(B, T), log_ratio_clamp=20.0)
    ours = cispo_surrogate(ratio, logp, adv, eps_low=None, eps_high=0.2)
    assert torch.allclose(ours, expected, rtol=1e-12, atol=1e-12)
    with_low = cispo_surrogate(ratio, logp, adv, eps_low=0.5, eps_high=0.2)
    assert torch.allclose(with_low, -torch.clamp(verl_ratio, 0.5, 1.2) * adv * logp, rtol=1e-12, atol=1e-12)


def verl_kl(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """kl_penalty_forward: kl/k1, mse/k2, and low_var_kl/k3 with its two clamps."""
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref).square()
    kl = torch.clamp(ref - logp, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def test_kl_estimators_match_verl_kl_penalty() -> None:
    logp, ref, _, _ = batch(2)
    for kind in ("k1", "k2"):
        assert torch.allclose(kl_divergence(logp, ref, kind), verl_kl(logp, ref, kind), rtol=1e-12)
    ours = kl_divergence(logp, ref, "k3", log_ratio_clamp=20.0, kl_clamp=10.0)
    assert torch.allclose(ours, verl_kl(logp, ref, "k3"), rtol=1e-12)
    assert ours.max().item() == 10.0  # the −30 log-ratio token is capped


def test_seq_mean_token_sum_matches_verl_agg_loss() -> None:
    # agg_loss "seq-mean-token-sum": per-sequence token sums, averaged over sequences with any token.
    losses, _, _, mask = batch(3)
    mask[4] = 0.0  # a fully masked sequence is left out of the mean
    seq_losses = (losses * mask).sum(-1)
    seq_mask = (mask.sum(-1) > 0).double()
    expected = (seq_losses * seq_mask).sum() / seq_mask.sum()
    assert torch.allclose(aggregate_loss(losses, mask, "seq_mean_token_sum"), expected, rtol=1e-12)


def test_rloo_matches_verl_rloo() -> None:
    # compute_rloo_outcome_advantage: r·n/(n − 1) − mean·n/(n − 1) within each prompt's group.
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grouped = rewards.view(3, 4)
    n = 4
    expected = (grouped * n / (n - 1) - grouped.mean(dim=1, keepdim=True) * n / (n - 1)).reshape(-1)
    assert torch.allclose(group_advantages(rewards, 4, scale_rewards="rloo"), expected, rtol=1e-12)

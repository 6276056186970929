"""Outcome advantages (GRPO, Dr.GRPO, RLOO, REINFORCE++ and its baseline variant) with unscorable
rewards kept out of the baselines, and the KL-in-reward penalty.

Rollouts arrive grouped: the G completions of prompt 0 first, then prompt 1's, and so on.
A reward that could not be decided (``None``, NaN, or a grader status other than ``ok``) is
NaN here: it is left out of its group's mean and std, and its advantage is 0 — the same
semantics as TRL's ``GRPOTrainer`` for reward functions that return ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.algorithms.registry import Registry

AdvantageEstimator = Callable[[torch.Tensor, float, torch.Tensor | None], torch.Tensor]
"""``(grouped rewards (G, n) float64 with NaN for unscorable, ε, grouped token counts (G, n) or None)
→ advantages (G, n)``; NaN → 0 after. Only estimators in :data:`TOKEN_WEIGHTED_ESTIMATORS` read the
token counts (None: every rollout weighs 1)."""

ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("scale_rewards")
TOKEN_WEIGHTED_ESTIMATORS: set[str] = set()
"""Estimators whose batch statistics weigh each rollout by its completion's token count."""
RewardScaling = str
"""A name in :data:`ADVANTAGE_ESTIMATORS` (``group``, ``batch``, ``none``, ``rloo``, ``reinforce_pp``,
``reinforce_pp_baseline`` and any registered later)."""


def rewards_tensor(rewards: Sequence[float | None] | torch.Tensor,
                   statuses: Sequence[str] | None = None) -> torch.Tensor:
    """Rewards as a float tensor where every undecided reward is NaN.

    ``r_i = NaN`` when ``rewards[i] is None``, when it is already NaN, or when ``statuses[i] != "ok"``.
    """
    if isinstance(rewards, torch.Tensor):
        out = rewards.detach().to(torch.float32).clone().reshape(-1)
    else:
        out = torch.tensor([float("nan") if r is None else float(r) for r in rewards], dtype=torch.float32)
    if statuses is not None:
        if len(statuses) != out.numel():
            raise ValueError(f"statuses: got {len(statuses)} statuses for {out.numel()} rewards")
        not_ok = torch.tensor([s != "ok" for s in statuses], dtype=torch.bool)
        out[not_ok] = float("nan")
    return out


def group_view(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Flat rewards ``(N,)`` as ``(N / G, G)``: one row per prompt's group."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards: expected a flat tensor whose length is a multiple of group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)


def nan_std(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation over the non-NaN entries: sqrt(Σ(x − x̄)² / (n − 1)).

    With fewer than two non-NaN entries the spread is unknown and the result is 0 (nothing to scale by).
    """
    valid = ~torch.isnan(values)
    count = valid.sum(dim=dim, keepdim=True) if dim is not None else valid.sum()
    mean = torch.nanmean(values, dim=dim, keepdim=True) if dim is not None else torch.nanmean(values)
    squared = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values))
    total = squared.sum(dim=dim, keepdim=True) if dim is not None else squared.sum()
    std = torch.sqrt(total / (count - 1).clamp(min=1))
    std = torch.where(count >= 2, std, torch.zeros_like(std))
    if dim is not None and not keepdim:
        std = std.squeeze(dim)
    return std


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale_rewards: RewardScaling = "group",
                     eps: float = 1e-4, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Advantage of each rollout, by the estimator registered as ``scale_rewards``.

    Rewards are viewed as groups ``(G, n)`` in float64 (so tiny spreads do not lose digits before the
    division); NaN rewards are excluded from means and σ by every estimator, and any NaN advantage
    (an unscorable reward, or a group with no valid reward) ends as 0. ε defaults to TRL's 1e-4.
    ``token_counts`` ``(N,)``: each completion's counted tokens, for the token-weighted estimators.
    """
    estimator = ADVANTAGE_ESTIMATORS.get(scale_rewards)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    grouped = group_view(rewards.to(torch.float64), group_size)
    counts = None if token_counts is None else group_view(token_counts.to(torch.float64).reshape(-1), group_size)
    return torch.nan_to_num(estimator(grouped, eps, counts), nan=0.0).reshape(-1).to(out_dtype)


def register_estimator(name: str, *, token_weighted: bool = False) -> Callable[[AdvantageEstimator],
                                                                               AdvantageEstimator]:
    """Register the decorated estimator as ``scale_rewards: name`` (``token_weighted``: it reads token counts)."""
    def add(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADVANTAGE_ESTIMATORS.add(name, fn)
        if token_weighted:
            TOKEN_WEIGHTED_ESTIMATORS.add(name)
        return fn
    return add


def _centred(grouped: torch.Tensor) -> torch.Tensor:
    # nanmean of an all-NaN group is NaN; group_advantages turns those rows into 0.
    return grouped - torch.nanmean(grouped, dim=1, keepdim=True)


@register_estimator("group")
def group_scaled(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """GRPO: ``A_i = (r_i − mean_g r) / (σ_g + ε)``, σ_g the unbiased std of rollout i's group."""
    return _centred(grouped) / (nan_std(grouped, dim=1, keepdim=True) + eps)


@register_estimator("batch")
def batch_scaled(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """``A_i = (r_i − mean_g r) / (σ_B + ε)``: mean per group, σ_B the std of all rewards in the batch."""
    return _centred(grouped) / (nan_std(grouped) + eps)


@register_estimator("none")
def unscaled(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Dr.GRPO: ``A_i = r_i − mean_g r``, no division at all (ε unused)."""
    return _centred(grouped)


@register_estimator("rloo")
def leave_one_out(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``A_i = r_i − (Σ_{j≠i} r_j) / (n − 1)``, the mean of the other valid
    rewards of the group as baseline (= n/(n−1)·(r_i − mean_g r)); no scaling (ε unused). A group with a
    single valid reward has no baseline: 0/0, so advantage 0. As TRL's RLOOTrainer (scorable siblings
    only) and veRL's ``rloo`` (verl/trainer/ppo/core_algos.py, compute_rloo_outcome_advantage)."""
    valid = (~torch.isnan(grouped)).sum(dim=1, keepdim=True).to(grouped.dtype)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    return grouped - (total - grouped) / (valid - 1)


def _whiten(values: torch.Tensor, token_counts: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``(x − μ) / (σ + ε)`` over the whole batch's valid entries, each weighted by its token count w_i
    (1 when None): μ = Σ w x / Σ w, σ² = Σ w (x − μ)² / (Σ w − 1) — the unbiased variance over the
    batch's tokens, as veRL's masked_whiten of per-token returns (verl/utils/torch_functional.py)."""
    valid = ~torch.isnan(values)
    weights = torch.ones_like(values) if token_counts is None else token_counts.to(values.dtype)
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    x = torch.where(valid, values, torch.zeros_like(values))
    total = weights.sum()
    mean = (weights * x).sum() / total.clamp(min=1e-12)
    var = (weights * (x - mean) ** 2).sum() / (total - 1).clamp(min=1e-12)
    std = torch.where(total > 1, var.sqrt(), torch.zeros_like(var))
    return (values - mean) / (std + eps)


@register_estimator("reinforce_pp", token_weighted=True)
def reinforce_plus_plus(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): no per-prompt baseline; the rewards are whitened over the
    whole batch, ``A_i = (r_i − μ_B) / (σ_B + ε)``, with μ_B, σ_B over the batch's tokens (each rollout
    weighted by its token count: with an outcome reward and γ = 1 every token's return is r_i). veRL's
    ``reinforce_plus_plus`` (verl/trainer/ppo/core_algos.py, compute_reinforce_plus_plus_outcome_advantage)
    and OpenRLHF; they whiten with rsqrt(σ² + 1e-8) where ε is added to σ here."""
    return _whiten(grouped, token_counts, eps)


@register_estimator("reinforce_pp_baseline", token_weighted=True)
def reinforce_plus_plus_baseline(grouped: torch.Tensor, eps: float,
                                 token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE++-baseline: the group mean subtracted first, then whitened over the batch's tokens,
    ``x_i = r_i − mean_g r``, ``A_i = (x_i − μ_B(x)) / (σ_B(x) + ε)`` (veRL's
    ``reinforce_plus_plus_baseline``, compute_reinforce_plus_plus_baseline_outcome_advantage)."""
    return _whiten(_centred(grouped), token_counts, eps)


def kl_penalised_rewards(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """KL in the reward: ``r_i − β Σ_t m_it KL_it``, the per-token KL of rollout i (its sampling policy
    against the reference) summed over its counted tokens. The advantage estimator then sees the
    penalised reward (veRL's ``use_kl_in_reward``: apply_kl_penalty in verl/trainer/ppo/ray_trainer.py
    subtracts β·KL per token and the outcome estimators sum the token rewards; TRL's RLOOTrainer with
    beta > 0 does the same with k1). NaN rewards stay NaN."""
    return rewards - beta * (kl * mask.to(kl.dtype)).sum(-1).to(rewards.dtype)


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose valid rewards have zero spread (σ_g = 0): groups that teach nothing."""
    stds = nan_std(group_view(rewards.to(torch.float64), group_size), dim=1)
    return float((stds == 0).to(torch.float64).mean())

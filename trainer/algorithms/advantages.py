"""Group-relative advantages (GRPO, Dr.GRPO) with unscorable rewards kept out of the baseline.

Rollouts arrive grouped: the G completions of prompt 0 first, then prompt 1's, and so on.
A reward that could not be decided (``None``, NaN, or a grader status other than ``ok``) is
NaN here: it is left out of its group's mean and std, and its advantage is 0 — the same
semantics as TRL's ``GRPOTrainer`` for reward functions that return ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainer.algorithms.registry import Registry

AdvantageEstimator = Callable[[torch.Tensor, float], torch.Tensor]
"""``(grouped rewards (G, n) float64 with NaN for unscorable, ε) → advantages (G, n)``; NaN → 0 after."""

ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("scale_rewards")
RewardScaling = str
"""A name in :data:`ADVANTAGE_ESTIMATORS` (``group``, ``batch``, ``none`` and any registered later)."""


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
                     eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantage of each rollout, by the estimator registered as ``scale_rewards``.

    Rewards are viewed as groups ``(G, n)`` in float64 (so tiny spreads do not lose digits before the
    division); NaN rewards are excluded from means and σ by every estimator, and any NaN advantage
    (an unscorable reward, or a group with no valid reward) ends as 0. ε defaults to TRL's 1e-4.
    """
    estimator = ADVANTAGE_ESTIMATORS.get(scale_rewards)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    grouped = group_view(rewards.to(torch.float64), group_size)
    return torch.nan_to_num(estimator(grouped, eps), nan=0.0).reshape(-1).to(out_dtype)


def _centred(grouped: torch.Tensor) -> torch.Tensor:
    # nanmean of an all-NaN group is NaN; group_advantages turns those rows into 0.
    return grouped - torch.nanmean(grouped, dim=1, keepdim=True)


@ADVANTAGE_ESTIMATORS.register("group")
def group_scaled(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    """GRPO: ``A_i = (r_i − mean_g r) / (σ_g + ε)``, σ_g the unbiased std of rollout i's group."""
    return _centred(grouped) / (nan_std(grouped, dim=1, keepdim=True) + eps)


@ADVANTAGE_ESTIMATORS.register("batch")
def batch_scaled(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    """``A_i = (r_i − mean_g r) / (σ_B + ε)``: mean per group, σ_B the std of all rewards in the batch."""
    return _centred(grouped) / (nan_std(grouped) + eps)


@ADVANTAGE_ESTIMATORS.register("none")
def unscaled(grouped: torch.Tensor, eps: float) -> torch.Tensor:
    """Dr.GRPO: ``A_i = r_i − mean_g r``, no division at all (ε unused)."""
    del eps
    return _centred(grouped)


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose valid rewards have zero spread (σ_g = 0): groups that teach nothing."""
    stds = nan_std(group_view(rewards.to(torch.float64), group_size), dim=1)
    return float((stds == 0).to(torch.float64).mean())

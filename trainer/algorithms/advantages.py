"""Group-relative advantages (GRPO, Dr.GRPO) with unscorable rewards kept out of the baseline.

Rollouts arrive grouped: the G completions of prompt 0 first, then prompt 1's, and so on.
A reward that could not be decided (``None``, NaN, or a grader status other than ``ok``) is
NaN here: it is left out of its group's mean and std, and its advantage is 0 — the same
semantics as TRL's ``GRPOTrainer`` for reward functions that return ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RewardScaling = Literal["group", "batch", "none"]
REWARD_SCALINGS: tuple[str, ...] = ("group", "batch", "none")


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
    """Group-relative advantage of each rollout.

    ``A_i = (r_i − mean_g r) / (σ + ε)`` where ``mean_g`` is the mean over rollout i's group and σ is
    - ``"group"``: the (unbiased) std of the group (GRPO),
    - ``"batch"``: the std of all rewards in the batch (mean still per group),
    - ``"none"``: no division at all, ``A_i = r_i − mean_g r`` (Dr.GRPO).
    NaN rewards are excluded from mean and σ, and their advantage is 0. A group with no valid
    reward gives advantages 0. ε defaults to TRL's 1e-4.
    """
    if scale_rewards not in REWARD_SCALINGS:
        raise ValueError(f"scale_rewards must be one of {REWARD_SCALINGS}, got {scale_rewards!r}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    rewards = rewards.to(torch.float64)  # float64 so tiny spreads do not lose digits before the division
    grouped = group_view(rewards, group_size)
    # nanmean of an all-NaN group is NaN; those rows end as 0 below.
    centred = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "group":
        std = nan_std(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)
        advantages = centred / (std + eps)
    elif scale_rewards == "batch":
        advantages = centred / (nan_std(rewards) + eps)
    else:
        advantages = centred
    return torch.nan_to_num(advantages, nan=0.0).to(out_dtype)


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose valid rewards have zero spread (σ_g = 0): groups that teach nothing."""
    stds = nan_std(group_view(rewards.to(torch.float64), group_size), dim=1)
    return float((stds == 0).to(torch.float64).mean())

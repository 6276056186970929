"""DAPO's data-side tricks: dynamic sampling, the soft overlong penalty and masking truncated completions."""

from __future__ import annotations

import torch

from trainer.algorithms.advantages import group_view, nan_std


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO dynamic sampling: which groups to keep, shape ``(num_groups,)``.

    keep_g ⇔ σ_g > 0, i.e. the group's valid (non-NaN) rewards are not all equal. A group whose
    rewards are all equal (all correct, all wrong) has every advantage 0 and only dilutes the
    batch; a group with fewer than two valid rewards carries no signal either and is dropped.
    Expand to rollouts with ``keep.repeat_interleave(group_size)``.
    """
    return nan_std(group_view(rewards.to(torch.float64), group_size), dim=1) > 0


def overlong_penalty(completion_lengths: torch.Tensor, *, max_length: int, cache_length: int,
                     factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment added to each rollout's reward.

    With L_max = ``max_length``, L_cache = ``cache_length`` and |y| the completion length::

        R(y) = 0                                      if |y| ≤ L_max − L_cache
        R(y) = factor · ((L_max − L_cache) − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
        R(y) = −factor                                if |y| > L_max

    i.e. a linear ramp from 0 down to −factor across the last L_cache tokens before the limit.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not 0 < cache_length < max_length:
        raise ValueError(f"cache_length must be in (0, max_length={max_length}), got {cache_length}")
    lengths = completion_lengths.to(torch.float64)
    excess = (lengths - (max_length - cache_length)) / cache_length
    return (-factor * excess.clamp(min=0.0, max=1.0)).to(torch.float32)


def truncated_completions(completion_ids: torch.Tensor, mask: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """Which completions were cut at the length limit, shape ``(B,)`` bool: those whose last counted
    token is not an end-of-sequence id (a finished completion keeps its EOS as its last token). An
    empty completion is not truncated. TRL's ``mask_truncated_completions`` rule (its
    ``_generate_and_score_completions``: ``ids[-1] not in eos_and_pad``)."""
    lengths = mask.sum(-1).long()
    last = completion_ids.gather(-1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    stops = torch.tensor(stop_ids, dtype=completion_ids.dtype, device=completion_ids.device)
    return (lengths > 0) & ~torch.isin(last, stops)


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering / TRL's ``mask_truncated_completions``: m'_it = m_it · [rollout i not
    truncated], so a cut-off completion (no EOS, its reward judged on a fragment) takes no part in the
    loss, its token count or its KL term."""
    return mask * (~truncated).to(mask.dtype).unsqueeze(-1)

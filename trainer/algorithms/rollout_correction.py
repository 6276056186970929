"""Rollout importance-sampling correction for rollouts sampled by another engine (vLLM): the four modes
of TRL's ``vllm_importance_sampling_mode`` (trl/trainer/grpo_trainer.py, GRPOTrainer
._generate_and_score_completions, TRL 1.16).

Shapes: ``old_logp``, ``rollout_logp``, ``mask`` are ``(B, T)`` over completion tokens; the weights
returned are ``(B, T)`` in every mode (a sequence mode's one weight per completion is repeated over
its tokens).
"""

from __future__ import annotations

from typing import Literal

import torch

from trainer.algorithms.policy_loss import LOG_RATIO_CLAMP, rollout_is_weights

RolloutISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
ROLLOUT_IS_MODES: tuple[str, ...] = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def rollout_correction_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *,
                               mode: str = "token_truncate", cap: float | None, min_weight: float | None = None,
                               log_ratio_clamp: float | None = LOG_RATIO_CLAMP) -> torch.Tensor:
    """Rollout IS weights w, detached (a fixed correction of the policy term), in one of four modes.

    With δ_t = m_t · (log π_old(y_t) − log π_rollout(y_t)), δ_t = 0 where the rollout log-prob is NaN
    (not captured: ratio 1), C_max = ``cap`` and C_min = ``min_weight`` (None: unbounded)::

        token modes:     r_t = exp(δ_t)                          one ratio per token
        sequence modes:  r_t = exp(Σ_s δ_s)  for every t          one ratio per completion
        *_truncate:      w_t = min(max(r_t, C_min), C_max)
        *_mask:          w_t = r_t if C_min ≤ r_t ≤ C_max else 0

    The log-ratio (δ_t, or the sum Σ_s δ_s) is clamped to [−``log_ratio_clamp``, ``log_ratio_clamp``]
    before ``exp`` when given (veRL's 20: only values outside e^±20 move, so the weights equal TRL's
    whenever the bounds lie inside [e^−20, e^20]). As TRL's token_truncate, token_mask,
    sequence_truncate and sequence_mask with vllm_importance_sampling_clip_min = C_min and clip_max =
    C_max; token_truncate is :func:`~trainer.algorithms.policy_loss.rollout_is_weights` with the lower
    bound added.
    """
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"rollout_is_mode must be one of {ROLLOUT_IS_MODES}, got {mode!r}")
    if cap is not None and cap <= 0:
        raise ValueError(f"rollout_is_cap must be positive, got {cap}")
    if min_weight is not None and min_weight < 0:
        raise ValueError(f"rollout_is_min must be non-negative, got {min_weight}")
    if cap is not None and min_weight is not None and min_weight >= cap:
        raise ValueError(f"rollout_is_min must be below rollout_is_cap, got {min_weight} >= {cap}")
    if mode == "token_truncate" and cap is not None:
        weights = rollout_is_weights(old_logp, rollout_logp, mask, cap=cap, log_ratio_clamp=log_ratio_clamp)
        return weights if min_weight is None else torch.clamp(weights, min=min_weight)
    delta = torch.nan_to_num((old_logp - rollout_logp) * mask.to(old_logp.dtype), nan=0.0)
    if mode.startswith("sequence"):
        delta = delta.sum(dim=-1, keepdim=True)
    if log_ratio_clamp is not None:
        delta = torch.clamp(delta, -log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(delta)
    if mode.endswith("truncate"):
        if min_weight is not None or cap is not None:
            ratio = torch.clamp(ratio, min=min_weight, max=cap)
    else:
        low = min_weight if min_weight is not None else -torch.inf
        high = cap if cap is not None else torch.inf
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    return ratio.expand_as(old_logp).contiguous().detach()

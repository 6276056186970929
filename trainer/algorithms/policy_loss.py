"""GRPO-family policy loss: importance ratios, the clipped surrogate, k3 KL, and the loss aggregations.

Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are ``(B, T)`` over completion tokens
(``mask`` is 1 on tokens that count, 0 on padding and on masked tool output); advantages are
``(B,)`` (one per rollout) or ``(B, T)`` (an algorithm that reshapes them per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from trainer.algorithms.stats import clip_fractions, masked_mean

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "bnpo")
ImportanceSamplingLevel = Literal["token", "sequence"]
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token log importance ratio log ρ_t = log π_θ(y_t) − log π_old(y_t)."""
    return logp - old_logp


def importance_weights(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                       level: ImportanceSamplingLevel = "token") -> torch.Tensor:
    """Importance ratio at token or sequence level.

    - ``"token"``: ρ_t = exp(log π_θ − log π_old), shape ``(B, T)``.
    - ``"sequence"`` (GSPO): s = exp(Σ_t m_t log ρ_t / max(Σ_t m_t, 1)), the length-normalised
      sequence ratio, shape ``(B, 1)``, shared by every token of the sequence.
    """
    log_rho = log_ratio(logp, old_logp)
    if level == "token":
        return torch.exp(log_rho)
    if level == "sequence":
        return torch.exp(masked_mean(log_rho, mask, dim=-1)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float, eps_high: float,
                      dual_clip_c: float | None = None) -> torch.Tensor:
    """Per-token PPO loss (to minimise) with asymmetric clip and an optional dual clip.

    L_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)            (DAPO clip-higher: ε_high > ε_low)
    dual clip (Ye et al. 2020), only where A < 0:  L_t = min(L_t, −c·A), so a token whose ratio has
    run far above 1 on a bad rollout contributes at most c·|A| (c > 1).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    if dual_clip_c is not None:
        if dual_clip_c <= 1:
            raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
        capped = torch.min(loss, -dual_clip_c * advantages)
        loss = torch.where(advantages < 0, capped, loss)
    return loss


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: LossType, *,
                   max_completion_length: int | None = None,
                   num_items_in_batch: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token losses ``(B, T)`` (or ``(B, 1)``, broadcast) to a scalar, with TRL's meanings.

    With m the mask, B the rows of this micro-batch, L the max completion length:
    - ``grpo``:    (1/B) Σ_i [Σ_t m_it ℓ_it / Σ_t m_it]         mean per sequence, then over sequences
    - ``bnpo``:    Σ_it m_it ℓ_it / Σ_it m_it                    token mean over this micro-batch
    - ``dr_grpo``: Σ_it m_it ℓ_it / (B · L)                      constant normaliser, no length bias
    - ``dapo``:    Σ_it m_it ℓ_it / N                            N = ``num_items_in_batch``, the token count
      of the whole rollout batch (all micro-batches), so the micro-batch losses sum to a global token
      mean; defaults to this micro-batch's token count.
    Division by gradient-accumulation steps (for grpo, bnpo, dr_grpo) is left to the caller.
    """
    mask = mask.to(per_token_loss.dtype)
    masked_sum_rows = (per_token_loss * mask).sum(-1)
    if loss_type == "grpo":
        return (masked_sum_rows / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked_sum_rows.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError("max_completion_length: the dr_grpo loss needs the max completion length (a positive int)")
        return masked_sum_rows.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        normaliser = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        return masked_sum_rows.sum() / normaliser.to(per_token_loss.dtype).clamp(min=1.0)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    per_token_loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def grpo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                     loss_type: LossType = "dapo", eps_low: float = 0.2, eps_high: float = 0.28,
                     dual_clip_c: float | None = None, beta: float = 0.0, ref_logp: torch.Tensor | None = None,
                     kl_times_ratio: bool = True, importance_sampling_level: ImportanceSamplingLevel = "token",
                     max_completion_length: int | None = None,
                     num_items_in_batch: float | torch.Tensor | None = None) -> PolicyLossOutput:
    """The full GRPO-family loss on one micro-batch.

    ℓ_t = clipped_surrogate(ρ, A) + β · KL_t,   KL_t = k3(logp, ref_logp) · (ρ if ``kl_times_ratio``)
    then ``aggregate_loss(ℓ, mask, loss_type)``. ``kl_times_ratio`` multiplies the k3 term by the
    (differentiable) importance ratio, which makes its gradient the unbiased reverse-KL gradient
    (TRL's ``use_bias_correction_kl``, on by default there). Metrics: KL mean, clip fractions,
    mean ratio.
    """
    mask = mask.to(logp.dtype)
    ratio = importance_weights(logp, old_logp, mask, importance_sampling_level)
    per_token_loss = clipped_surrogate(ratio, advantages, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c)
    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("ref_logp: beta is non-zero, so reference log-probs are required")
        kl = k3_kl(logp, ref_logp)
        if kl_times_ratio:
            kl = kl * ratio
        # Logged as it enters the loss: with the ratio it is the importance-weighted (unbiased) KL estimate.
        metrics["kl"] = float(masked_mean(kl.detach(), mask))
        per_token_loss = per_token_loss + beta * kl
    loss = aggregate_loss(per_token_loss, mask, loss_type, max_completion_length=max_completion_length,
                          num_items_in_batch=num_items_in_batch)
    metrics.update(clip_fractions(ratio.detach(), advantages, mask, eps_low=eps_low, eps_high=eps_high))
    metrics["ratio_mean"] = float(masked_mean(ratio.detach(), mask))
    return PolicyLossOutput(loss=loss, per_token_loss=per_token_loss, metrics=metrics)

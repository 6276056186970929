"""GRPO-family policy loss: importance ratios, the clipped surrogate, k3 KL, and the loss aggregations.

Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are ``(B, T)`` over completion tokens
(``mask`` is 1 on tokens that count, 0 on padding and on masked tool output); advantages are
``(B,)`` (one per rollout) or ``(B, T)`` (an algorithm that reshapes them per token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from trainer.algorithms.registry import Registry
from trainer.algorithms.stats import clip_fractions, masked_mean

LossType = str
"""A name in :data:`LOSS_AGGREGATIONS` (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo`` and any registered later)."""
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


@dataclass(frozen=True)
class AggregationContext:
    """What a loss aggregation may need besides the per-token losses and the mask."""

    max_completion_length: int | None = None
    num_items_in_batch: float | torch.Tensor | None = None


@dataclass(frozen=True)
class LossAggregation:
    """A registered reduction of per-token losses to a scalar.

    ``global_token_mean``: the reduction already divides by the token count of the whole rollout
    batch (``num_items_in_batch``), so the training loop passes that count and must not divide by the
    gradient-accumulation steps again; for the others the loop divides by accumulation itself.
    """

    reduce: Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]
    global_token_mean: bool = False


LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss_type")


def loss_aggregation(name: str, *, global_token_mean: bool = False) -> Callable[
        [Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]],
        Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]]:
    """Register the decorated ``(per_token_loss·mask, mask, context) → scalar`` as loss ``name``."""
    def add(fn: Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]
            ) -> Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]:
        LOSS_AGGREGATIONS.add(name, LossAggregation(fn, global_token_mean))
        return fn
    return add


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: LossType, *,
                   max_completion_length: int | None = None,
                   num_items_in_batch: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token losses ``(B, T)`` (or ``(B, 1)``, broadcast) to a scalar by the aggregation
    registered as ``loss_type`` (the formulas are on each one below, with TRL's meanings).

    Each receives the masked losses ``m ⊙ ℓ`` and the mask m as floats of the loss's dtype. Division
    by gradient-accumulation steps (for all but ``global_token_mean`` ones) is left to the caller.
    """
    aggregation = LOSS_AGGREGATIONS.get(loss_type)
    mask = mask.to(per_token_loss.dtype)
    context = AggregationContext(max_completion_length, num_items_in_batch)
    return aggregation.reduce(per_token_loss * mask, mask, context)


@loss_aggregation("grpo")
def sequence_mean(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``grpo``: (1/B) Σ_i [Σ_t m_it ℓ_it / Σ_t m_it] — mean per sequence, then over sequences."""
    return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@loss_aggregation("dr_grpo")
def constant_normaliser(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``dr_grpo``: Σ_it m_it ℓ_it / (B · L), L the max completion length — no length bias."""
    length = context.max_completion_length
    if length is None or length < 1:
        raise ValueError("max_completion_length: the dr_grpo loss needs the max completion length (a positive int)")
    return masked.sum() / (masked.size(0) * length)


@loss_aggregation("dapo", global_token_mean=True)
def batch_token_mean(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``dapo``: Σ_it m_it ℓ_it / N, N = ``num_items_in_batch``, the token count of the whole rollout
    batch (all micro-batches), so the micro-batch losses sum to a global token mean; defaults to this
    micro-batch's token count."""
    count = context.num_items_in_batch
    normaliser = mask.sum() if count is None else torch.as_tensor(count)
    return masked.sum() / normaliser.to(masked.dtype).clamp(min=1.0)


@loss_aggregation("bnpo")
def micro_batch_token_mean(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``bnpo``: Σ_it m_it ℓ_it / Σ_it m_it — token mean over this micro-batch."""
    return masked.sum() / mask.sum().clamp(min=1.0)


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

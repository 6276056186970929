"""GRPO-family policy loss: importance ratios, the clipped and CISPO surrogates, KL estimators, the
rollout importance-sampling correction, the entropy bonus and the loss aggregations.

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
Objective = Literal["clip", "cispo"]
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")


LOG_RATIO_CLAMP = 20.0
"""veRL's bound on log ρ before ``exp`` (verl/trainer/ppo/core_algos.py, compute_policy_loss_vanilla)."""
KL_CLAMP = 10.0
"""veRL's bound on the per-token low_var_kl value (verl/trainer/ppo/core_algos.py, kl_penalty_forward)."""


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Per-token log importance ratio log ρ_t = log π_θ(y_t) − log π_old(y_t), clamped to [−c, c] if
    ``clamp`` = c is given (veRL clamps to [−20, 20] before ``exp``, so one stale token cannot give a
    ratio of e^30 ≈ 1e13; beyond the clamp the ratio is constant and carries no gradient)."""
    delta = logp - old_logp
    return delta if clamp is None else torch.clamp(delta, -clamp, clamp)


def importance_weights(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                       level: ImportanceSamplingLevel = "token", *,
                       log_ratio_clamp: float | None = None) -> torch.Tensor:
    """Importance ratio at token or sequence level (log ρ_t clamped first when ``log_ratio_clamp`` is set).

    - ``"token"``: ρ_t = exp(log π_θ − log π_old), shape ``(B, T)``.
    - ``"sequence"`` (GSPO, as TRL's ``importance_sampling_level="sequence"``):
      s = exp(Σ_t m_t log ρ_t / max(Σ_t m_t, 1)), the length-normalised sequence ratio, shape
      ``(B, 1)``, shared by every token of the sequence. (veRL's ``gspo`` loss instead caps the
      sequence log-ratio at 10; here the token log-ratios are clamped before the mean.)
    """
    log_rho = log_ratio(logp, old_logp, log_ratio_clamp)
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


def cispo_surrogate(ratio: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, *,
                    eps_low: float | None, eps_high: float) -> torch.Tensor:
    """Per-token CISPO loss (MiniMax-M1, arXiv 2506.13585): the clipped importance weight, detached,
    times the advantage and the log-prob::

        L_t = −sg(clip(ρ_t, 1 − ε_low, 1 + ε_high)) · A · log π_θ(y_t)

    so every token keeps a gradient (−w·A on log π) however far its ratio has moved; only the weight
    is bounded. ``eps_low=None``: no lower bound (MiniMax-M1 sets ε_low large). veRL's ``cispo``
    (verl/trainer/ppo/core_algos.py, compute_policy_loss_cispo) is this formula; TRL's
    ``loss_type="cispo"`` caps only from above at its ``epsilon_high`` (= 1 + ε_high here).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    low = None if eps_low is None else 1 - eps_low
    weight = torch.clamp(ratio, low, 1 + eps_high).detach()
    return -weight * advantages * logp


def cispo_clip_fractions(ratio: torch.Tensor, mask: torch.Tensor, *, eps_low: float | None,
                         eps_high: float) -> dict[str, float]:
    """Share of (masked) tokens whose CISPO weight is clipped, whatever the advantage's sign:
    low: ρ < 1 − ε_low (never when ε_low is None); high: ρ > 1 + ε_high; region: either."""
    high = ratio > 1 + eps_high
    low = ratio < 1 - eps_low if eps_low is not None else torch.zeros_like(high)
    return {
        "clip_fraction_low": float(masked_mean(low.float(), mask)),
        "clip_fraction_high": float(masked_mean(high.float(), mask)),
        "clip_fraction": float(masked_mean((low | high).float(), mask)),
    }


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logp, ref_logp) → per-token estimate of KL(π_θ ‖ π_ref)``, both ``(B, T)`` log-probs of the sampled tokens."""

KL_ESTIMATORS: Registry[KLEstimator] = Registry("kl_estimator")


@KL_ESTIMATORS.register("k1")
def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k1: log π_θ − log π_ref (unbiased, high variance, can be negative; veRL's ``kl``/``k1``)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k2: ½ (log π_θ − log π_ref)² (biased, low variance, ≥ 0; veRL's ``mse``/``k2``)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3: exp(ref − logp) − (ref − logp) − 1 (unbiased, ≥ 0; veRL's ``low_var_kl``/``k3``, TRL's KL)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3", *,
                  log_ratio_clamp: float | None = None, kl_clamp: float | None = None) -> torch.Tensor:
    """Per-token KL estimate by the estimator registered as ``estimator``, with veRL's clamps:
    log π_θ − log π_ref clamped to [−``log_ratio_clamp``, +``log_ratio_clamp``] first (veRL: 20, for
    low_var_kl) and the estimate to [−``kl_clamp``, +``kl_clamp``] (veRL: 10, for low_var_kl) — here
    for every estimator. Source: verl/trainer/ppo/core_algos.py, kl_penalty_forward."""
    fn = KL_ESTIMATORS.get(estimator)
    if log_ratio_clamp is not None:
        logp = ref_logp + torch.clamp(logp - ref_logp, -log_ratio_clamp, log_ratio_clamp)
    kl = fn(logp, ref_logp)
    return kl if kl_clamp is None else torch.clamp(kl, -kl_clamp, kl_clamp)


def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *,
                       cap: float, log_ratio_clamp: float | None = LOG_RATIO_CLAMP) -> torch.Tensor:
    """Truncated importance-sampling weight per token for rollouts sampled by another engine (vLLM)::

        w_t = min(π_old(y_t) / π_rollout(y_t), C) = min(exp(log π_old − log π_rollout), C)

    detached (a fixed correction), 1 on masked tokens and where the rollout log-prob is NaN (not
    captured). As TRL's ``vllm_importance_sampling_mode="token_truncate"`` with clip_max C and veRL's
    token-level ``rollout_is`` (verl/trainer/ppo/rollout_corr_helper.py, compute_rollout_correction_weights:
    weights.clamp(max=rollout_is_threshold)).
    """
    if cap <= 0:
        raise ValueError(f"rollout_is_cap must be positive, got {cap}")
    delta = torch.nan_to_num((old_logp - rollout_logp) * mask.to(old_logp.dtype), nan=0.0)
    if log_ratio_clamp is not None:
        delta = torch.clamp(delta, -log_ratio_clamp, log_ratio_clamp)
    return torch.clamp(torch.exp(delta), max=cap).detach()


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
    ``objective``: the per-token loss it reduces, ``"clip"`` (the PPO clipped surrogate) or ``"cispo"``.
    """

    reduce: Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]
    global_token_mean: bool = False
    objective: Objective = "clip"


LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss_type")


def loss_aggregation(name: str, *, global_token_mean: bool = False, objective: Objective = "clip") -> Callable[
        [Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]],
        Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]]:
    """Register the decorated ``(per_token_loss·mask, mask, context) → scalar`` as loss ``name``."""
    def add(fn: Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]
            ) -> Callable[[torch.Tensor, torch.Tensor, AggregationContext], torch.Tensor]:
        LOSS_AGGREGATIONS.add(name, LossAggregation(fn, global_token_mean, objective))
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


@loss_aggregation("seq_mean_token_sum")
def sequence_token_sum(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``seq_mean_token_sum``: Σ_i [Σ_t m_it ℓ_it] / B', B' the sequences with at least one counted token —
    a sum over tokens, a mean over sequences (veRL's ``loss_agg_mode="seq-mean-token-sum"``,
    verl/trainer/ppo/core_algos.py, agg_loss; fully masked sequences, e.g. masked truncations, are
    left out of B' as there)."""
    sequences = (mask.sum(-1) > 0).to(masked.dtype).sum()
    return masked.sum() / sequences.clamp(min=1.0)


@loss_aggregation("cispo", global_token_mean=True, objective="cispo")
def cispo_token_mean(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
    """``cispo``: the CISPO objective (:func:`cispo_surrogate`) reduced as ``dapo`` — Σ_it m_it ℓ_it / N with
    N the rollout batch's token count (TRL's ``loss_type="cispo"``)."""
    return batch_token_mean(masked, mask, context)


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    per_token_loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, loss_type: LossType, *,
                  max_completion_length: int | None = None,
                  num_items_in_batch: float | torch.Tensor | None = None) -> torch.Tensor:
    """The entropy term subtracted from the loss, H̄ = ``aggregate_loss(H, mask, loss_type)``: the
    per-token entropies reduced exactly as the policy loss is, so the bonus c·H̄ keeps the same
    per-token weight as the policy term (veRL's ``entropy_coeff``: entropy_loss = agg_loss(entropy,
    loss_agg_mode), policy_loss −= c · entropy_loss; TRL's ``entropy_coef`` is a token mean per
    micro-batch, the same as ``bnpo`` here)."""
    return aggregate_loss(entropy, mask, loss_type, max_completion_length=max_completion_length,
                          num_items_in_batch=num_items_in_batch)


def grpo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                     loss_type: LossType = "dapo", eps_low: float = 0.2, eps_high: float = 0.28,
                     dual_clip_c: float | None = None, beta: float = 0.0, ref_logp: torch.Tensor | None = None,
                     kl_times_ratio: bool = True, importance_sampling_level: ImportanceSamplingLevel = "token",
                     max_completion_length: int | None = None,
                     num_items_in_batch: float | torch.Tensor | None = None,
                     kl_estimator: str = "k3", log_ratio_clamp: float | None = LOG_RATIO_CLAMP,
                     kl_clamp: float | None = KL_CLAMP, entropy: torch.Tensor | None = None,
                     entropy_coef: float = 0.0, is_weights: torch.Tensor | None = None,
                     cispo_eps_low: float | None = None, cispo_eps_high: float = 4.0) -> PolicyLossOutput:
    """The full GRPO-family loss on one micro-batch.

    ℓ_t = w_t · surrogate_t(ρ, A) + β · KL_t,   KL_t = kl_estimator(logp, ref_logp) · (ρ if ``kl_times_ratio``)
    loss = aggregate_loss(ℓ, mask, loss_type) − c · aggregate_loss(H, mask, loss_type)

    surrogate: the clipped PPO one (:func:`clipped_surrogate`), or CISPO's for an aggregation whose
    objective is ``cispo``; w_t the rollout importance-sampling weights (``is_weights``, 1 when None),
    applied to the policy term only, as TRL and veRL do; H the per-token entropies (they need their
    gradient) and c ``entropy_coef``. ``kl_times_ratio`` multiplies the KL term by the
    (differentiable) importance ratio, which makes its gradient the unbiased reverse-KL gradient
    (TRL's ``use_bias_correction_kl``). Metrics: KL mean, clip fractions, mean ratio.
    """
    mask = mask.to(logp.dtype)
    aggregation = LOSS_AGGREGATIONS.get(loss_type)
    ratio = importance_weights(logp, old_logp, mask, importance_sampling_level, log_ratio_clamp=log_ratio_clamp)
    if aggregation.objective == "cispo":
        per_token_loss = cispo_surrogate(ratio, logp, advantages, eps_low=cispo_eps_low, eps_high=cispo_eps_high)
    else:
        per_token_loss = clipped_surrogate(ratio, advantages, eps_low=eps_low, eps_high=eps_high,
                                           dual_clip_c=dual_clip_c)
    metrics: dict[str, float] = {}
    if is_weights is not None:
        per_token_loss = per_token_loss * is_weights
        metrics["rollout_is_weight_mean"] = float(masked_mean(is_weights, mask))
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("ref_logp: beta is non-zero, so reference log-probs are required")
        kl = kl_divergence(logp, ref_logp, kl_estimator, log_ratio_clamp=log_ratio_clamp, kl_clamp=kl_clamp)
        if kl_times_ratio:
            kl = kl * ratio
        # Logged as it enters the loss: with the ratio it is the importance-weighted (unbiased) KL estimate.
        metrics["kl"] = float(masked_mean(kl.detach(), mask))
        per_token_loss = per_token_loss + beta * kl
    loss = aggregate_loss(per_token_loss, mask, loss_type, max_completion_length=max_completion_length,
                          num_items_in_batch=num_items_in_batch)
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy: entropy_coef is non-zero, so per-token entropies are required")
        loss = loss - entropy_coef * entropy_bonus(entropy, mask, loss_type,
                                                   max_completion_length=max_completion_length,
                                                   num_items_in_batch=num_items_in_batch)
    if aggregation.objective == "cispo":
        metrics.update(cispo_clip_fractions(ratio.detach(), mask, eps_low=cispo_eps_low, eps_high=cispo_eps_high))
    else:
        metrics.update(clip_fractions(ratio.detach(), advantages, mask, eps_low=eps_low, eps_high=eps_high))
    metrics["ratio_mean"] = float(masked_mean(ratio.detach(), mask))
    return PolicyLossOutput(loss=loss, per_token_loss=per_token_loss, metrics=metrics)

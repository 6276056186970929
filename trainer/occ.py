"""OCC (Optimal Coefficient Calibration) and the four ways to train an MTP head during RL, as pure
functions on tensors.

Shapes as in :mod:`trainer.algorithms.policy_loss`: per-token ``(B, T)`` over completion tokens,
advantages ``(B,)`` or ``(B, T)``. ``logp`` are the main head's log-probs log π_θ(y_t), ``old_logp``
the main head's at rollout time, log π_old(y_t), ``mtp_logp`` the MTP head's log q_θ(y_t) of the same
token (predicted from h_{t−2} and y_{t−1}; :func:`trainer.mtp.joint_logprobs`), ``mask`` 1 on the
response tokens that count *and* have an MTP prediction (completion mask x ``JointOutput.mtp_mask``).

The regimes (``MtpSettings.regime``), each adding an MTP term to the RL loss of the micro-batch:

- ``detach``: L_MTP = CE = aggregate(−log q_θ(y_t)) on a trunk that is detached
  (``joint_logprobs(..., detach_trunk=True)``): the head keeps tracking the policy, and no MTP
  gradient reaches the trunk, the shared embeddings or the output layer;
- ``ce``: L_MTP = λ · CE, the gradient flowing into the trunk;
- ``policy``: L_MTP = the clipped policy loss of the MTP head with the main head's old log-probs,
  ratio ρ'_t = exp(log q_θ(y_t) − log π_old(y_t)), and advantages λ · A;
- ``occ``: the same policy loss with advantages λ_t · A, λ_t from :func:`occ_coefficient`.

The estimator (the spec's masked inner-product form, computed without gradient per micro-batch)::

    δ_RL,t  = log π_θ(y_t) − log π_old(y_t)      the RL loss's own log-ratio (main head)
    δ_MTP,t = log q_θ(y_t) − log π_old(y_t)      the MTP policy loss's log-ratio (MTP head vs the main head's old)
    λ_t = λ₊ · Σ_t m_t δ_RL,t δ_MTP,t / (Σ_t m_t δ_MTP,t² + 1e-8)

On the first mini-batch of a rollout batch θ = θ_old, so δ_RL = 0 and λ_t = 0: λ_t carries
information only with several optimizer steps per rollout batch (:func:`check_schedule`).

Choices the spec leaves open (also in docs/occ.md): λ_t is not clipped (a negative λ_t, an MTP
direction against the RL one, scales the advantages negatively, as the formula says); the fixed
λ of ``ce`` and ``policy`` is one setting, ``lambda``; ``policy`` and ``occ`` scale the advantages
(as the spec says for occ), which for λ ≥ 0 equals λ times the policy loss; sums are taken in
float64; ⟨δ_RL, δ_MTP⟩ and ‖δ_MTP‖² are logged in every regime (diagnostics), λ_t used only by occ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from trainer.algorithms import LOG_RATIO_CLAMP, LossType, aggregate_loss, grpo_policy_loss, masked_mean

Regime = Literal["detach", "ce", "policy", "occ"]
REGIMES: tuple[str, ...] = ("detach", "ce", "policy", "occ")
OCC_EPS = 1e-8


class MtpSettings(BaseModel):
    """The run setting ``mtp``: which regime trains the MTP head, its coefficients and its warm-up."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    regime: Regime = Field(default="detach", description="detach: the head learns by cross-entropy on a "
                           "detached trunk; ce: cross-entropy x lambda into the trunk; policy: the MTP policy "
                           "loss with advantages x lambda; occ: advantages x lambda_t, estimated online.")
    lambda_: float = Field(default=0.1, alias="lambda", ge=0, description="λ: the fixed coefficient of ce and "
                           "policy.")
    lambda_plus: float = Field(default=1.0, gt=0, description="λ₊ of occ: λ_t = λ₊ <δ_RL, δ_MTP> / "
                               "(|δ_MTP|² + 1e-8) (the spec's 1.0; the authors' script uses 0.1).")
    warmup_steps: int = Field(default=0, ge=0, description="Cross-entropy steps on t+2 that train the head "
                              "alone (trunk frozen) before RL starts.")
    warmup_learning_rate: float = Field(default=1e-3, gt=0, le=1)
    warmup_prompts: int = Field(default=16, ge=1, le=4096, description="The warm-up trains on the policy's own "
                                "rollouts (group_size each, no rewards) of this many training prompts, drawn in a "
                                "seeded order apart from the run's prompt sampler.")
    seed: int = Field(default=0, ge=0, description="Seed of a new head's random initial weights.")
    learning_rate: float | None = Field(default=None, gt=0, le=1, description="The head's own learning rate "
                                        "during RL (its own optimizer parameter group, on the run's schedule); "
                                        "unset: the run's learning_rate.")

    @property
    def detach_trunk(self) -> bool:
        """Whether the MTP forward must detach the trunk (the ``detach`` regime)."""
        return self.regime == "detach"


def check_schedule(settings: MtpSettings, *, mini_batches: int, num_iterations: int = 1) -> None:
    """``occ`` needs at least two optimizer steps per rollout batch (``mini_batches`` x
    ``num_iterations`` ≥ 2): with one, θ = θ_old throughout, δ_RL = 0 and λ_t = 0 always."""
    if settings.regime == "occ" and mini_batches * num_iterations < 2:
        raise ValueError(
            f"mtp.regime: occ estimates λ_t from how far earlier mini-batches moved the policy (δ_RL), "
            f"so it needs several optimizer steps per rollout batch: set mini_batches ≥ 2 (got mini_batches="
            f"{mini_batches}, num_iterations={num_iterations}); with one, δ_RL = 0 and λ_t = 0 throughout")


def _schedule_after(value: MtpSettings | None, info: ValidationInfo) -> MtpSettings | None:
    if value is None:
        return None
    mini, iterations = info.data.get("mini_batches"), info.data.get("num_iterations", 1)
    if isinstance(mini, int) and isinstance(iterations, int):  # else that field's own error is reported
        check_schedule(value, mini_batches=mini, num_iterations=iterations)
    return value


MtpConfig = Annotated[MtpSettings | None, AfterValidator(_schedule_after)]
"""The run-config field, checked against the fields declared before it: in ``RunConfig``,
``mtp: MtpConfig = None`` (after ``mini_batches`` and ``num_iterations``)."""


class LocalMtpSettings(MtpSettings):
    """``mtp`` in a config the machine's owner writes: it may also name a folder to load the head from.

    A config that arrives over the trainer service's API has no such field (as it has no
    ``reward.api_key_env``): a tenant cannot make the server read a file of its choosing.
    """

    init_from: str | None = Field(default=None, min_length=1, description="A folder holding mtp_head.safetensors "
                                  "and mtp_head.json (a checkpoint, or its hf/ export) to start the head from; "
                                  "unset: a new head (seed). A resumed run always loads its checkpoint's head.")


LocalMtpConfig = Annotated[LocalMtpSettings | None, AfterValidator(_schedule_after)]
"""``LocalRunConfig.mtp``: :data:`MtpConfig` with ``init_from``."""


# ---------------------------------------------------------------- the estimator


def log_prob_deltas(logp: torch.Tensor, old_logp: torch.Tensor,
                    mtp_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ_RL, δ_MTP) = (log π_θ − log π_old, log q_θ − log π_old), detached."""
    old = old_logp.detach()
    return logp.detach() - old, mtp_logp.detach() - old


def masked_inner(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩_m = Σ_t m_t a_t b_t, in float64, no gradient."""
    with torch.no_grad():
        m = mask.to(torch.float64)
        # Masked entries may hold anything (padding): zero them before multiplying, NaN included.
        return (torch.where(m > 0, a.to(torch.float64), 0.0) * torch.where(m > 0, b.to(torch.float64), 0.0)
                * m).sum()


@dataclass(frozen=True)
class OccEstimate:
    coefficient: torch.Tensor  # λ_t, a 0-dim float64 tensor
    inner: torch.Tensor  # ⟨δ_RL, δ_MTP⟩
    norm_sq: torch.Tensor  # ‖δ_MTP‖²


def occ_coefficient(delta_rl: torch.Tensor, delta_mtp: torch.Tensor, mask: torch.Tensor, *,
                    lambda_plus: float = 1.0, eps: float = OCC_EPS) -> OccEstimate:
    """λ_t = λ₊ · ⟨δ_RL, δ_MTP⟩_m / (‖δ_MTP‖²_m + ε), ε = 1e-8, over the masked response tokens."""
    inner = masked_inner(delta_rl, delta_mtp, mask)
    norm_sq = masked_inner(delta_mtp, delta_mtp, mask)
    return OccEstimate(coefficient=lambda_plus * inner / (norm_sq + eps), inner=inner, norm_sq=norm_sq)


# ---------------------------------------------------------------- the MTP losses


def mtp_ce_loss(mtp_logp: torch.Tensor, mask: torch.Tensor, *, loss_type: LossType = "dapo",
                max_completion_length: int | None = None,
                num_items_in_batch: float | torch.Tensor | None = None) -> torch.Tensor:
    """CE = aggregate_loss(−log q_θ(y_t), m, loss_type): reduced as the RL loss is, so λ compares like for like."""
    return aggregate_loss(-mtp_logp, mask, loss_type, max_completion_length=max_completion_length,
                          num_items_in_batch=num_items_in_batch)


def mtp_acceptance(top1: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of masked tokens where the MTP head's top-1 equals the actual token (y_t, i.e. t+2 from its input)."""
    hits = (top1 == targets).to(torch.float32)
    return float(masked_mean(hits, mask.to(torch.float32)))


@dataclass
class MtpLossOutput:
    loss: torch.Tensor  # the MTP term to add to the micro-batch's RL loss
    coefficient: float  # the λ used (λ_t for occ, λ for ce/policy, 1 for detach's head-only CE)
    metrics: dict[str, float]


def mtp_loss(settings: MtpSettings, *, logp: torch.Tensor, old_logp: torch.Tensor, mtp_logp: torch.Tensor,
             advantages: torch.Tensor, mask: torch.Tensor, mtp_top1: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, loss_type: LossType = "dapo", eps_low: float = 0.2,
             eps_high: float = 0.28, dual_clip_c: float | None = None,
             max_completion_length: int | None = None, num_items_in_batch: float | torch.Tensor | None = None,
             log_ratio_clamp: float | None = LOG_RATIO_CLAMP) -> MtpLossOutput:
    """The MTP term of one micro-batch under ``settings.regime`` (formulas in the module docstring).

    ``mask``: response tokens with an MTP prediction; ``old_logp``: the main head's rollout-time
    log-probs (also the MTP policy loss's π_old); ``mtp_top1`` / ``targets``: for the acceptance rate.
    Metrics: ``mtp_lambda`` (the coefficient used), ``mtp_inner`` ⟨δ_RL, δ_MTP⟩, ``mtp_norm_sq``
    ‖δ_MTP‖², ``mtp_lambda_occ`` (the occ estimate, logged in every regime), ``mtp_loss`` (the term
    as it enters the loss), ``mtp_ce`` (the head's token-mean cross-entropy on the response, whatever
    the regime) and ``mtp_acceptance`` (when top-1 ids are given).
    """
    mask = mask.to(mtp_logp.dtype)
    delta_rl, delta_mtp = log_prob_deltas(logp, old_logp, mtp_logp)
    estimate = occ_coefficient(delta_rl, delta_mtp, mask, lambda_plus=settings.lambda_plus)
    aggregation: dict[str, Any] = {"max_completion_length": max_completion_length,
                                   "num_items_in_batch": num_items_in_batch}
    extra: dict[str, float] = {}
    if settings.regime in ("detach", "ce"):
        coefficient = 1.0 if settings.regime == "detach" else settings.lambda_
        loss = coefficient * mtp_ce_loss(mtp_logp, mask, loss_type=loss_type, **aggregation)
    else:
        coefficient = settings.lambda_ if settings.regime == "policy" else float(estimate.coefficient)
        out = grpo_policy_loss(mtp_logp, old_logp.detach(), advantages * coefficient, mask, loss_type=loss_type,
                               eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c, beta=0.0,
                               log_ratio_clamp=log_ratio_clamp, **aggregation)
        loss = out.loss
        extra = {"mtp_ratio_mean": out.metrics.get("ratio_mean", 0.0),
                 "mtp_clip_fraction": out.metrics.get("clip_fraction", 0.0)}
    metrics = {"mtp_lambda": coefficient, "mtp_lambda_occ": float(estimate.coefficient),
               "mtp_inner": float(estimate.inner), "mtp_norm_sq": float(estimate.norm_sq),
               "mtp_loss": float(loss.detach()),
               "mtp_ce": float(-masked_mean(mtp_logp.detach(), mask)), **extra}
    if mtp_top1 is not None and targets is not None:
        metrics["mtp_acceptance"] = mtp_acceptance(mtp_top1, targets, mask)
    return MtpLossOutput(loss=loss, coefficient=coefficient, metrics=metrics)

"""OCC's estimator, the MTP losses of each regime and the ``mtp`` settings, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import BaseModel, ValidationError

from trainer.occ import (
    MtpConfig,
    MtpSettings,
    check_schedule,
    log_prob_deltas,
    masked_inner,
    mtp_acceptance,
    mtp_ce_loss,
    mtp_loss,
    occ_coefficient,
)


def test_the_estimator_on_tiny_tensors() -> None:
    delta_rl = torch.tensor([[0.5, -1.0, 2.0]])
    delta_mtp = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding: left out of both sums
    estimate = occ_coefficient(delta_rl, delta_mtp, mask)
    # <δ_RL, δ_MTP> = 0.5·1 + (−1)·2 = −1.5;  ‖δ_MTP‖² = 1² + 2² = 5;  λ_t = 1.0 · −1.5 / (5 + 1e-8) = −0.3
    assert estimate.inner.item() == -1.5
    assert estimate.norm_sq.item() == 5.0
    assert estimate.coefficient.item() == pytest.approx(-0.3, abs=1e-9)
    # λ₊ = 0.1 (the authors' script): −0.03
    assert occ_coefficient(delta_rl, delta_mtp, mask, lambda_plus=0.1).coefficient.item() == pytest.approx(-0.03)


def test_deltas_are_log_ratios_against_the_main_heads_old_log_probs() -> None:
    logp, old, mtp = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), torch.tensor([[-0.5, -3.0]])
    delta_rl, delta_mtp = log_prob_deltas(logp, old, mtp)
    assert delta_rl.tolist() == [[0.5, 0.0]]  # −1.0 − (−1.5), −2.0 − (−2.0)
    assert delta_mtp.tolist() == [[1.0, -1.0]]  # −0.5 − (−1.5), −3.0 − (−2.0)
    # <δ_RL, δ_MTP> = 0.5·1 + 0·(−1) = 0.5;  ‖δ_MTP‖² = 2;  λ_t = 0.25
    assert occ_coefficient(delta_rl, delta_mtp, torch.ones(1, 2)).coefficient.item() == pytest.approx(0.25)


def test_lambda_is_exactly_zero_when_the_policy_has_not_moved() -> None:
    """First mini-batch of a rollout batch: θ = θ_old, so δ_RL = 0 and λ_t = 0, whatever δ_MTP is."""
    logp = torch.tensor([[-1.2, -0.7, -3.1]])
    zero_rl, delta_mtp = log_prob_deltas(logp, logp.clone(), torch.tensor([[-2.0, -0.1, -5.0]]))
    assert occ_coefficient(zero_rl, delta_mtp, torch.ones(1, 3)).coefficient.item() == 0.0
    # Both zero: 0 / (0 + 1e-8) = 0, not NaN.
    both = occ_coefficient(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3))
    assert both.coefficient.item() == 0.0 and both.norm_sq.item() == 0.0


def test_masked_entries_never_reach_the_sums_even_nan() -> None:
    a = torch.tensor([[1.0, math.nan]])
    b = torch.tensor([[3.0, 7.0]])
    assert masked_inner(a, b, torch.tensor([[1.0, 0.0]])).item() == 3.0  # 1·3; the NaN is padding


def test_the_estimate_has_no_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mtp = torch.tensor([[-0.5, -3.0]], requires_grad=True)
    delta_rl, delta_mtp = log_prob_deltas(logp, torch.tensor([[-1.5, -2.0]]), mtp)
    assert not occ_coefficient(delta_rl, delta_mtp, torch.ones(1, 2)).coefficient.requires_grad


def test_ce_regime_is_lambda_times_the_token_mean_cross_entropy() -> None:
    mtp = torch.tensor([[-1.0, -3.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert mtp_ce_loss(mtp, mask).item() == pytest.approx(2.0)  # dapo: (1 + 3) / 2 tokens
    out = mtp_loss(MtpSettings(regime="ce", **{"lambda": 0.5}), logp=mtp, old_logp=mtp, mtp_logp=mtp,
                   advantages=torch.tensor([1.0]), mask=mask)
    assert out.loss.item() == pytest.approx(1.0)  # 0.5 · 2
    assert out.coefficient == 0.5 and out.metrics["mtp_ce"] == pytest.approx(2.0)
    detach = mtp_loss(MtpSettings(regime="detach"), logp=mtp, old_logp=mtp, mtp_logp=mtp,
                      advantages=torch.tensor([1.0]), mask=mask)
    assert detach.loss.item() == pytest.approx(2.0) and detach.coefficient == 1.0  # the head's own CE


def test_policy_regime_scales_the_advantages_by_the_fixed_lambda() -> None:
    old = torch.tensor([[-1.0, -2.0]])
    # q = π_old on both tokens: ratio 1, per-token loss −ρ·(λA) = −0.1·2 = −0.2; dapo mean −0.2
    out = mtp_loss(MtpSettings(regime="policy", **{"lambda": 0.1}), logp=old, old_logp=old, mtp_logp=old.clone(),
                   advantages=torch.tensor([2.0]), mask=torch.ones(1, 2))
    assert out.loss.item() == pytest.approx(-0.2)
    assert out.metrics["mtp_lambda"] == 0.1 and out.metrics["mtp_ratio_mean"] == pytest.approx(1.0)


def test_occ_regime_scales_the_advantages_by_the_estimate() -> None:
    logp, old, mtp = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), torch.tensor([[-0.5, -3.0]])
    out = mtp_loss(MtpSettings(regime="occ"), logp=logp, old_logp=old, mtp_logp=mtp,
                   advantages=torch.tensor([2.0]), mask=torch.ones(1, 2))
    # λ_t = 0.25 (above), so A' = 0.5. MTP ratios ρ' = exp(δ_MTP) = (e, e⁻¹) = (2.71828, 0.36788);
    # clip to [0.8, 1.28]; A' > 0: per token −A'·min(ρ', clip ρ') = −0.5·1.28 = −0.64 and −0.5·0.36788 = −0.18394;
    # dapo mean: (−0.64 − 0.18394) / 2 = −0.41197
    assert out.coefficient == pytest.approx(0.25)
    assert out.loss.item() == pytest.approx(-0.41197, abs=1e-5)
    assert out.metrics["mtp_inner"] == pytest.approx(0.5) and out.metrics["mtp_norm_sq"] == pytest.approx(2.0)
    zero = mtp_loss(MtpSettings(regime="occ"), logp=old, old_logp=old, mtp_logp=mtp,
                    advantages=torch.tensor([2.0]), mask=torch.ones(1, 2))
    assert zero.coefficient == 0.0 and zero.loss.item() == 0.0  # δ_RL = 0: no MTP term at all


def test_acceptance_rate_counts_masked_top1_hits() -> None:
    top1, targets = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 3]])
    assert mtp_acceptance(top1, targets, torch.tensor([[1.0, 1.0, 0.0]])) == 0.5  # 1 hit of 2 counted tokens


def test_settings_defaults_aliases_and_unknown_keys() -> None:
    settings = MtpSettings.model_validate({"regime": "policy", "lambda": 0.5, "lambda_plus": 0.1})
    assert settings.lambda_ == 0.5 and settings.lambda_plus == 0.1 and not settings.detach_trunk
    defaults = MtpSettings()
    assert defaults.regime == "detach" and defaults.lambda_plus == 1.0 and defaults.detach_trunk
    with pytest.raises(ValidationError, match="regime"):
        MtpSettings.model_validate({"regime": "joint"})
    with pytest.raises(ValidationError, match="lambda"):
        MtpSettings.model_validate({"lambda": -1.0})
    with pytest.raises(ValidationError, match="lamda"):
        MtpSettings.model_validate({"lamda": 0.1})


def test_occ_needs_several_optimizer_steps_per_rollout_batch() -> None:
    with pytest.raises(ValueError, match=r"mtp.regime: occ .* mini_batches ≥ 2 \(got mini_batches=1"):
        check_schedule(MtpSettings(regime="occ"), mini_batches=1)
    check_schedule(MtpSettings(regime="occ"), mini_batches=2)
    check_schedule(MtpSettings(regime="occ"), mini_batches=1, num_iterations=2)  # a second pass moves θ too
    check_schedule(MtpSettings(regime="policy"), mini_batches=1)  # only occ depends on δ_RL


class _Run(BaseModel):
    """How the run config adds the setting: one field, declared after mini_batches and num_iterations."""

    mini_batches: int = 1
    num_iterations: int = 1
    mtp: MtpConfig = None


def test_the_run_config_field_refuses_occ_with_one_mini_batch() -> None:
    with pytest.raises(ValidationError) as caught:
        _Run.model_validate({"mini_batches": 1, "mtp": {"regime": "occ"}})
    error = caught.value.errors()[0]
    assert error["loc"] == ("mtp",) and "mini_batches ≥ 2" in error["msg"]
    run = _Run.model_validate({"mini_batches": 4, "mtp": {"regime": "occ", "lambda_plus": 0.1}})
    assert run.mtp is not None and run.mtp.regime == "occ"
    assert _Run.model_validate({}).mtp is None

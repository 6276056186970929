"""Rollout IS correction modes (trainer.algorithms.rollout_correction): hand-computed weights for each of
the four modes, NaN and padding handling, the log-ratio clamp, argument checks, and the run config."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.unit.trainer.test_config import base
from trainer.algorithms import ROLLOUT_IS_MODES, rollout_correction_weights, rollout_is_weights
from trainer.config import ConfigError, parse_config

NAN = math.nan


def logps(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(old_logp, rollout_logp) with π_old / π_rollout = the given ratio per token (NaN: not captured)."""
    rollout = torch.full((len(ratios), len(ratios[0])), -1.5, dtype=torch.float64)
    r = torch.tensor(ratios, dtype=torch.float64)
    old = rollout + torch.log(torch.nan_to_num(r, nan=1.0))
    return old, torch.where(torch.isnan(r), torch.full_like(rollout, NAN), rollout)


# Row 0: ratios 4, 1/4, 2 (product 2) and a padding token. Row 1: 4, 2 and a token vLLM gave no
# log-prob for (NaN: ratio 1), product 8. Row 2: 0.6, 1/4 and padding, product 0.15.
RATIOS = [[4.0, 0.25, 2.0, 5.0], [4.0, 2.0, NAN, 1.0], [0.6, 0.25, 7.0, 7.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
CAP, LOW = 3.0, 0.5


@pytest.mark.parametrize(("mode", "expected"), [
    # min(max(r_t, 0.5), 3); padding has δ = 0, so r = 1.
    ("token_truncate", [[3.0, 0.5, 2.0, 1.0], [3.0, 2.0, 1.0, 1.0], [0.6, 0.5, 1.0, 1.0]]),
    # r_t if 0.5 ≤ r_t ≤ 3 else 0: 4 and 1/4 are dropped.
    ("token_mask", [[0.0, 0.0, 2.0, 1.0], [0.0, 2.0, 1.0, 1.0], [0.6, 0.0, 1.0, 1.0]]),
    # one ratio per row: 2 → 2, 8 → 3, 0.15 → 1/2, repeated over the row.
    ("sequence_truncate", [[2.0] * 4, [3.0] * 4, [0.5] * 4]),
    # 2 is inside [1/2, 3]; 8 and 0.15 are outside: the whole row weighs 0.
    ("sequence_mask", [[2.0] * 4, [0.0] * 4, [0.0] * 4]),
])
def test_each_mode_by_hand(mode: str, expected: list[list[float]]) -> None:
    old, rollout = logps(RATIOS)
    weights = rollout_correction_weights(old, rollout, MASK, mode=mode, cap=CAP, min_weight=LOW)
    assert weights.shape == (3, 4) and weights.dtype == torch.float64
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("mode", "expected"), [
    # Without a lower bound: truncate keeps small ratios, mask drops only those above the cap.
    ("token_truncate", [[3.0, 0.25, 2.0, 1.0], [3.0, 2.0, 1.0, 1.0], [0.6, 0.25, 1.0, 1.0]]),
    ("token_mask", [[0.0, 0.25, 2.0, 1.0], [0.0, 2.0, 1.0, 1.0], [0.6, 0.25, 1.0, 1.0]]),
    ("sequence_truncate", [[2.0] * 4, [3.0] * 4, [0.15] * 4]),
    ("sequence_mask", [[2.0] * 4, [0.0] * 4, [0.15] * 4]),
])
def test_each_mode_without_a_lower_bound(mode: str, expected: list[list[float]]) -> None:
    old, rollout = logps(RATIOS)
    weights = rollout_correction_weights(old, rollout, MASK, mode=mode, cap=CAP)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_token_truncate_is_the_existing_weights_when_no_lower_bound() -> None:
    old, rollout = logps(RATIOS)
    assert torch.equal(rollout_correction_weights(old, rollout, MASK, cap=CAP),
                       rollout_is_weights(old, rollout, MASK, cap=CAP))


@pytest.mark.parametrize("mode", ROLLOUT_IS_MODES)
def test_no_bounds_gives_the_plain_ratio(mode: str) -> None:
    # cap None and min None (TRL's clip_max=None, clip_min=None): no clamp, no mask.
    old, rollout = logps([[4.0, 0.25, 8.0]])
    weights = rollout_correction_weights(old, rollout, torch.ones(1, 3), mode=mode, cap=None)
    expected = [[8.0] * 3] if mode.startswith("sequence") else [[4.0, 0.25, 8.0]]
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["token_mask", "sequence_mask"])
def test_mask_bounds_are_inclusive(mode: str) -> None:
    # δ = 0 exactly, so r = 1: kept at C_max = 1 and at C_min = 1 (TRL masks r < C_min or r > C_max).
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    one = torch.ones(1, 2)
    assert rollout_correction_weights(zeros, zeros, one, mode=mode, cap=1.0, min_weight=0.5).tolist() == [[1.0, 1.0]]
    assert rollout_correction_weights(zeros, zeros, one, mode=mode, cap=2.0, min_weight=1.0).tolist() == [[1.0, 1.0]]


def test_the_sequence_log_ratio_is_clamped_after_the_sum() -> None:
    # δ = 15 on each of two tokens: Σ = 30 is clamped to 20 (veRL's bound), each δ alone is not.
    old = torch.tensor([[15.0, 15.0]], dtype=torch.float64)
    rollout = torch.zeros(1, 2, dtype=torch.float64)
    one = torch.ones(1, 2)
    clamped = rollout_correction_weights(old, rollout, one, mode="sequence_truncate", cap=None)
    assert clamped[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-12)
    free = rollout_correction_weights(old, rollout, one, mode="sequence_truncate", cap=None, log_ratio_clamp=None)
    assert free[0, 0].item() == pytest.approx(math.exp(30.0), rel=1e-12)
    token = rollout_correction_weights(old, rollout, one, mode="token_mask", cap=None)
    assert token[0, 0].item() == pytest.approx(math.exp(15.0), rel=1e-12)


@pytest.mark.parametrize("mode", ROLLOUT_IS_MODES)
def test_weights_are_detached_and_finite_with_nans(mode: str) -> None:
    old, rollout = logps(RATIOS)
    old.requires_grad_(True)
    weights = rollout_correction_weights(old, rollout, MASK, mode=mode, cap=CAP, min_weight=LOW)
    assert not weights.requires_grad and torch.isfinite(weights).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "sequence_clip", "cap": 3.0}, "rollout_is_mode must be one of"),
    ({"cap": 0.0}, "rollout_is_cap must be positive, got 0.0"),
    ({"cap": 3.0, "min_weight": -0.1}, "rollout_is_min must be non-negative, got -0.1"),
    ({"cap": 3.0, "min_weight": 3.0}, "rollout_is_min must be below rollout_is_cap, got 3.0 >= 3.0"),
])
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    old, rollout = logps([[2.0]])
    with pytest.raises(ValueError, match=message):
        rollout_correction_weights(old, rollout, torch.ones(1, 1), **kwargs)


# ---------------------------------------------------------------- run config


def test_config_defaults_keep_token_truncate() -> None:
    config = parse_config(base())
    assert (config.rollout_is_mode, config.rollout_is_min) == ("token_truncate", None)
    vllm = parse_config(base(engine="vllm", device="cuda", rollout_is_cap=2.0, rollout_is_mode="sequence_mask",
                             rollout_is_min=0.5))
    assert (vllm.rollout_is_cap, vllm.rollout_is_mode, vllm.rollout_is_min) == (2.0, "sequence_mask", 0.5)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"rollout_is_mode": "token_mask"}, "rollout_is_mode: shapes the rollout IS correction, which rollout_is_cap "
                                        "turns on (engine: vllm); set rollout_is_cap too"),
    ({"rollout_is_min": 0.5, "engine": "vllm", "device": "cuda"}, "rollout_is_min: shapes the rollout IS correction"),
    ({"rollout_is_mode": "sequence_mask", "rollout_is_cap": 2.0}, "rollout_is_cap: corrects for vLLM's sampling, "
                                                                  "so it needs engine: vllm"),
    ({"rollout_is_mode": "sequence", "rollout_is_cap": 2.0, "engine": "vllm", "device": "cuda"},
     "rollout_is_mode: Input should be 'token_truncate', 'token_mask', 'sequence_truncate' or 'sequence_mask'"),
    ({"rollout_is_min": -1.0, "rollout_is_cap": 2.0, "engine": "vllm", "device": "cuda"},
     "rollout_is_min: Input should be greater than or equal to 0"),
    ({"rollout_is_min": 2.0, "rollout_is_cap": 2.0, "engine": "vllm", "device": "cuda"},
     "rollout_is_min: must be below rollout_is_cap, got 2.0 >= 2.0"),
])
def test_bad_rollout_is_options_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(base(**overrides))
    assert message in str(error.value)

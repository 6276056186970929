"""rollout_is_mode and rollout_is_min reach the loss through the training loop (tiny CPU model).

The engine is the scripted one of test_loss_options_loop, with vLLM-style log-probs attached: every
sampled token gets log π_rollout = +50, far above any real log-prob, so π_old / π_rollout ≈ e^−20 (the
log-ratio clamp) on every token and in every sequence — each mode then gives one known weight on
every counted token, and the logged ``rollout_is_weight_mean`` is that weight. The run config is
validated with the transformers engine and the correction set on the validated copy (the real one
needs engine: vllm and a GPU); what runs is our loop with a batch carrying rollout log-probs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.trainer.test_loss_options_loop import ScriptedEngine, make_config, reward
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards
from trainer.rollout import Rollout, SamplingSettings


class LogprobEngine(ScriptedEngine):
    """ScriptedEngine whose rollouts carry a rollout log-prob ``value`` per completion token."""

    def __init__(self, eos: int, value: float) -> None:
        super().__init__(eos)
        self.value = value

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        rollouts = super().generate(prompts, sampling, seed)
        for rollout in rollouts:
            rollout.rollout_logprobs = [self.value] * len(rollout.completion_ids)
        return rollouts


def step_metrics(tmp_path: Path, value: float, **correction: Any) -> dict[str, Any]:
    engine = LogprobEngine(eos=-1, value=value)
    config = make_config(tmp_path, max_steps=1).model_copy(update={"rollout_is_cap": 3.0, **correction})
    trainer = GRPOTrainer(config, rewards=CallableRewards(reward), engine=engine)
    engine.eos = int(trainer.tokenizer.eos_token_id)
    return trainer.train_step()


@pytest.mark.parametrize(("mode", "low", "expected"), [
    ("token_truncate", 0.5, 0.5),      # e^−20 raised to C_min
    ("token_mask", 0.5, 0.0),          # e^−20 < C_min: masked
    ("sequence_truncate", 0.25, 0.25),
    ("sequence_mask", 0.25, 0.0),
])
def test_mode_and_lower_bound_reach_the_loss(tmp_path: Path, mode: str, low: float, expected: float) -> None:
    metrics = step_metrics(tmp_path, 50.0, rollout_is_mode=mode, rollout_is_min=low)
    assert metrics["rollout_is_weight_mean"] == pytest.approx(expected, abs=1e-12)
    assert math.isfinite(metrics["loss"])


def test_default_mode_without_lower_bound_is_the_truncated_ratio(tmp_path: Path) -> None:
    metrics = step_metrics(tmp_path, 50.0)
    # min(e^−20, 3) in the policy's float32.
    assert metrics["rollout_is_weight_mean"] == pytest.approx(math.exp(-20.0), rel=1e-6)


@pytest.mark.parametrize("mode", ["token_mask", "sequence_mask"])
def test_missing_rollout_logprobs_weigh_one(tmp_path: Path, mode: str) -> None:
    # vLLM gave no log-prob (NaN) for any token: ratio 1, inside [C_min, C_max], so nothing is masked.
    metrics = step_metrics(tmp_path, math.nan, rollout_is_mode=mode, rollout_is_min=0.5)
    assert metrics["rollout_is_weight_mean"] == 1.0
    assert torch.isfinite(torch.tensor(metrics["loss"]))

"""Dynamic sampling filters on the accuracy signal by default, and reward_mean counts only kept groups.

A scripted engine makes the groups alternate: even groups are all wrong with lengths 1, 2, 5, 6
(the overlong penalty spreads their shaped reward, their accuracy is flat), odd groups are
right, wrong, right, wrong with length 1 (accuracy spreads). The kept groups, prompts drawn and
reward means below are worked out by hand from that script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.test_trainer_loop import make_config
from trainer.config import ConfigError, parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem
from trainer.rollout import Rollout, SamplingSettings


class AlternatingEngine:
    def __init__(self) -> None:
        self.groups = 0

    def sync_weights(self, model: torch.nn.Module) -> None:
        return None

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        rollouts = []
        for index, prompt in enumerate(prompts):
            flat = self.groups % 2 == 0
            self.groups += 1
            for k, length in enumerate((1, 2, 5, 6) if flat else (1, 1, 1, 1)):
                text = "wrong" if flat or k % 2 else "right"
                rollouts.append(Rollout(index, list(prompt), [5] * length, text, truncated=False))
        return rollouts


def right(completion: str, _ground_truth: Any, _item: RewardItem) -> float:
    return 1.0 if completion == "right" else 0.0


def _trainer(tmp_path: Path, signal: str | None) -> tuple[GRPOTrainer, AlternatingEngine]:
    settings: dict[str, Any] = {"dynamic_sampling": True, "max_resample_rounds": 3, "max_completion_length": 6,
                                "overlong": {"enabled": True, "cache_length": 4}}
    if signal is not None:
        settings["dynamic_sampling_signal"] = signal
    engine = AlternatingEngine()
    trainer = GRPOTrainer(make_config(tmp_path, f"ds-{signal}", **settings), rewards=CallableRewards(right),
                          engine=engine)
    return trainer, engine


def test_accuracy_is_the_default_signal(tmp_path: Path) -> None:
    trainer, engine = _trainer(tmp_path, None)
    assert trainer.config.dynamic_sampling_signal == "accuracy"
    rollouts, rewards, stats = trainer._collect(seed=0)
    # Round 0: group 0 (flat accuracy) dropped, group 1 kept; round 1: group 2 dropped; round 2: group 3 kept.
    assert engine.groups == 4 and stats["prompts_drawn"] == 4.0
    assert [r.text for r in rollouts] == ["right", "wrong", "right", "wrong"] * 2
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0] * 2
    # Kept: 4 right of 8 = 0.5 (std of 1,0,1,0,1,0,1,0 = √(4/7) = 0.534522); drawn: 4 of 16 = 0.25.
    assert stats["reward_mean"] == pytest.approx(0.5)
    assert stats["reward_std"] == pytest.approx(0.534522, abs=1e-6)
    assert stats["reward_mean_drawn"] == pytest.approx(0.25)


def test_reward_signal_keeps_groups_the_penalty_spreads(tmp_path: Path) -> None:
    trainer, engine = _trainer(tmp_path, "reward")
    rollouts, rewards, stats = trainer._collect(seed=0)
    # Both first groups carry a shaped-reward spread: nothing is redrawn.
    assert engine.groups == 2 and stats["prompts_drawn"] == 2.0
    # Lengths 1, 2, 5, 6 with L_max 6, L_cache 4: penalties 0, 0, −¾, −1; then 1, 0, 1, 0.
    assert rewards.tolist() == pytest.approx([0.0, 0.0, -0.75, -1.0, 1.0, 0.0, 1.0, 0.0])
    assert [len(r.completion_ids) for r in rollouts[:4]] == [1, 2, 5, 6]
    # reward_mean is the raw score of the kept rollouts: 2 right of 8.
    assert stats["reward_mean"] == pytest.approx(0.25) and stats["reward_mean_drawn"] == pytest.approx(0.25)


def test_the_last_round_keeps_whatever_it_draws(tmp_path: Path) -> None:
    trainer, engine = _trainer(tmp_path, None)
    trainer.config = trainer.config.model_copy(update={"max_resample_rounds": 0})
    rollouts, _, stats = trainer._collect(seed=0)
    assert engine.groups == 2 and len(rollouts) == 8
    assert stats["reward_mean"] == pytest.approx(0.25) == stats["reward_mean_drawn"]


def test_unknown_signal_is_refused() -> None:
    with pytest.raises(ConfigError, match="dynamic_sampling_signal: Input should be 'accuracy' or 'reward'"):
        parse_config({"model": {"tiny": {}}, "dataset": "x", "dynamic_sampling_signal": "score"})

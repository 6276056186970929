"""The loss options wired through the training loop, on a tiny random model (CPU) and a scripted engine.

The scripted engine returns the same four completions for every prompt: two that end with the EOS
token (text "A", reward 0.5) and two cut at the length limit without one (texts "T1" and "T0",
rewards 1 and 0). The group mean is 0.5, so only the truncated completions carry an advantage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.algorithms import truncated_completions
from trainer.config import RunConfig, parse_config
from trainer.grpo import GRPOTrainer, collate
from trainer.rewards import CallableRewards, RewardItem
from trainer.rollout import Rollout, SamplingSettings

REWARDS = {"A": 0.5, "T1": 1.0, "T0": 0.0}


class ScriptedEngine:
    def __init__(self, eos: int) -> None:
        self.eos = eos

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        scripted = [([20, 21, self.eos], "A", False), ([22, 23, self.eos], "A", False),
                    ([24, 25, 26, 27], "T1", True), ([28, 29, 30, 31], "T0", True)]
        return [Rollout(prompt_index=i, prompt_ids=list(p), completion_ids=list(ids), text=text, truncated=cut)
                for i, p in enumerate(prompts) for ids, text, cut in scripted[: sampling.group_size]]

    def sync_weights(self, model: torch.nn.Module) -> None:
        del model


def reward(completion: str, _truth: Any, _item: RewardItem) -> float:
    return REWARDS[completion]


def make_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"say {i}", "reward_model": {"ground_truth": "x"}}) + "\n"
                               for i in range(4)))
    data: dict[str, Any] = {"model": {"tiny": {"seed": 0}}, "dataset": str(dataset), "group_size": 4,
                            "prompts_per_step": 2, "max_steps": 2, "learning_rate": 1e-2,
                            "max_completion_length": 4, "seed": 0, "output_dir": str(tmp_path / "run")}
    data.update(overrides)
    return parse_config(data)


def trainer_for(tmp_path: Path, **overrides: Any) -> GRPOTrainer:
    engine = ScriptedEngine(eos=-1)
    trainer = GRPOTrainer(make_config(tmp_path, **overrides), rewards=CallableRewards(reward), engine=engine)
    engine.eos = int(trainer.tokenizer.eos_token_id)  # known once the tiny model's tokenizer is built
    return trainer


def count_optimizer_steps(trainer: GRPOTrainer) -> list[int]:
    steps = [0]
    original = trainer.policy.micro_step

    def counting(boundary: bool) -> float | None:
        steps[0] += int(boundary)
        return original(boundary=boundary)

    trainer.policy.micro_step = counting  # type: ignore[method-assign]
    return steps


def test_the_token_rule_agrees_with_the_engines_truncation_flags(tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path)
    rollouts = trainer.engine.generate([[1, 2]], SamplingSettings(group_size=4, max_new_tokens=4), seed=0)
    batch = collate(rollouts, trainer.tokenizer.pad_token_id)
    flags = truncated_completions(batch.completion_ids, batch.completion_mask, [trainer.tokenizer.eos_token_id])
    assert flags.tolist() == [r.truncated for r in rollouts] == [False, False, True, True]


def test_masked_truncations_leave_no_gradient(tmp_path: Path) -> None:
    # Only the truncated completions have A ≠ 0 (±1 / (σ + ε)); masking them leaves a zero gradient.
    masked = trainer_for(tmp_path / "masked", mask_truncated_completions=True).train_step()
    unmasked = trainer_for(tmp_path / "unmasked").train_step()
    assert masked["grad_norm"] == 0.0 and masked["loss"] == 0.0
    assert unmasked["grad_norm"] > 0.0


def test_num_iterations_reuses_the_batch_off_policy(tmp_path: Path) -> None:
    # μ = 2 passes x 2 mini-batches = 4 optimizer steps per rollout batch; after the first update the
    # ratio moves away from 1, so π_old was kept from before the first step.
    trainer = trainer_for(tmp_path, num_iterations=2, mini_batches=2)
    steps = count_optimizer_steps(trainer)
    metrics = trainer.train_step()
    assert steps[0] == 4
    assert metrics["ratio_mean"] != pytest.approx(1.0, abs=1e-7)
    single = trainer_for(tmp_path / "single")
    single_steps = count_optimizer_steps(single)
    assert single.train_step()["ratio_mean"] == 1.0 and single_steps[0] == 1


def test_kl_in_reward_moves_the_kl_out_of_the_loss(tmp_path: Path) -> None:
    # With kl_in_reward the loss has no β·KL term (no "kl" metric); the KL went into the rewards.
    in_reward = trainer_for(tmp_path / "reward", beta=0.5, kl_in_reward=True, mini_batches=2)
    in_reward.train_step()
    second = in_reward.train_step()  # the policy has moved: KL to the reference is no longer 0
    assert "kl" not in second and math.isfinite(second["loss"])
    assert second["reward_kl"] > 0.0  # k3 of the moved policy against the reference
    in_loss = trainer_for(tmp_path / "loss", beta=0.5, mini_batches=2).train_step()
    assert "kl" in in_loss


@pytest.mark.parametrize("overrides", [
    {"loss_type": "cispo"},
    {"importance_sampling_level": "sequence", "loss_type": "grpo"},
    {"scale_rewards": "reinforce_pp"},
    {"scale_rewards": "reinforce_pp_baseline", "mask_truncated_completions": True},
    {"scale_rewards": "rloo", "loss_type": "seq_mean_token_sum"},
    {"kl_estimator": "k2", "beta": 0.1, "log_ratio_clamp": None, "kl_clamp": None},
])
def test_each_option_trains(tmp_path: Path, overrides: dict[str, Any]) -> None:
    metrics = trainer_for(tmp_path, **overrides).train_step()
    assert math.isfinite(metrics["loss"]) and metrics.get("skipped_update") is None


def test_entropy_bonus_changes_the_gradient(tmp_path: Path) -> None:
    plain = trainer_for(tmp_path / "plain").train_step()
    bonus = trainer_for(tmp_path / "bonus", entropy_coef=0.5).train_step()
    assert bonus["grad_norm"] != pytest.approx(plain["grad_norm"], rel=1e-4)
    assert bonus["entropy"] == pytest.approx(plain["entropy"], rel=1e-6)  # same policy before the step


class SecondRank:
    """Rank 1 of two, whose peer (rank 0) holds one group with rewards [1, 0] over 3 and 1 tokens."""

    rank, world_size, distributed = 1, 2, True

    def all_gather(self, value: Any) -> list[Any]:
        rewards, counts = value
        return [([1.0, 0.0], [3, 1] if counts is not None else None), (rewards, counts)]


def test_advantages_use_the_run_epsilon_and_every_ranks_token_counts(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from trainer.distributed import Collective

    # Batch scaling with advantage_epsilon 0.25 on one rank: [1, 2, 3, 4], σ_B = 1.2909944,
    # A_4 = 1.5 / (1.2909944 + 0.25) = 0.9733971.
    local = SimpleNamespace(config=make_config(tmp_path, scale_rewards="batch", advantage_epsilon=0.25),
                            collective=Collective())
    advantages, _ = GRPOTrainer._advantages(local, torch.tensor([1.0, 2.0, 3.0, 4.0]))  # type: ignore[arg-type]
    assert advantages[3].item() == pytest.approx(0.9733971, abs=1e-6)
    # REINFORCE++ over two ranks, this rank holding [1, 0] over 1 and 3 tokens: the batch's tokens are
    # 1 1 1 0 | 1 0 0 0: μ = 4/8, σ² = 8 · 0.25 / 7 = 2/7, σ = 0.5345225 → this rank's A = ±0.5 / σ = ±0.9354143.
    two = SimpleNamespace(config=make_config(tmp_path, group_size=2, scale_rewards="reinforce_pp",
                                             advantage_epsilon=0.0), collective=SecondRank())
    mine, _ = GRPOTrainer._advantages(two, torch.tensor([1.0, 0.0]),  # type: ignore[arg-type]
                                      token_counts=torch.tensor([1, 3]))
    assert mine.tolist() == pytest.approx([0.9354143, -0.9354143], abs=1e-6)

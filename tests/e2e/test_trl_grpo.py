"""TRL's real GRPOTrainer trains a few steps on a tiny local model with our adapter as its reward function."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


def test_grpo_trainer_uses_rewardhub_rewards(live_server: LiveServer, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rewardhub.adapters.trl import TRLRewardFunction
    from services.common.tiny_models import build_tiny_causal_lm

    model_dir = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    dataset = Dataset.from_list([{"prompt": f"{a} plus {a} is", "ground_truth": str(2 * a)} for a in range(1, 9)])
    calls: list[int] = []

    class CountingReward(TRLRewardFunction):
        def __call__(self, *args, **kwargs):
            scores = super().__call__(*args, **kwargs)
            calls.append(len(scores))
            return scores

    counting = CountingReward({"type": "numeric"}, base_url=live_server.url,
                              api_key=live_server.tenant.keys["trainer"], name="rewardhub_numeric")
    config = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                        max_completion_length=6, max_steps=2, learning_rate=1e-4, logging_steps=1,
                        report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0,
                        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[counting], args=config, train_dataset=dataset)
    trainer.train()

    assert len(calls) >= 2 and all(n == 4 for n in calls)
    logged = [entry for entry in trainer.state.log_history if any(k.startswith("rewards/") for k in entry)]
    assert logged, trainer.state.log_history
    assert any(f"rewards/{counting.__name__}/mean" in entry for entry in logged)
    # A random model writes no numbers for most prompts: those are wrong answers (0.0, status ok),
    # never None, because the ground truths are valid numbers.
    assert set(counting.last_statuses) == {"ok"}

"""The multi-turn engine over vLLM (the GPU path): the same AgentRolloutEngine drives VLLMEngine's
``generate`` turn by turn. Skipped without a CUDA device (tests/conftest.py) or without vLLM."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.gpu, pytest.mark.timeout(900)]  # a hang guard, not a check


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the gpu extra)")
def test_multi_turn_delayed_run_on_vllm(tmp_path: Path) -> None:
    from trainer.agent.toy import build_tool_model, problems, score, warm_up
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    model = build_tool_model(tmp_path / "model", seed=0, hidden_size=128, num_layers=2)
    warm_up(model, "delayed", steps=100, seed=0, tool_share=1.0)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": p.prompt, "reward_model": {"ground_truth": str(p.value)}}) + "\n"
                               for p in problems(16, seed=1)))
    config = parse_config({"model": {"path": str(model), "dtype": "bfloat16"}, "dataset": str(dataset),
                           "engine": "vllm", "device": "cuda", "group_size": 4, "prompts_per_step": 4, "max_steps": 2,
                           "max_completion_length": 96, "output_dir": str(tmp_path / "run"), "export_hf": "none",
                           "multi_turn": {"tools": {"backend": "local"}}}, local=True)
    trainer = GRPOTrainer(config, rewards=CallableRewards(score))
    outcome = trainer.train()
    assert outcome.status == "succeeded"
    assert all(math.isfinite(m["loss"]) for m in outcome.history)
    assert all("turns_mean" in m for m in outcome.history)

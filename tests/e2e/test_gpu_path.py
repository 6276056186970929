"""The trainer's GPU path, on a machine with CUDA: bf16 + gradient checkpointing (+ flash-attn when
installed), the vLLM rollout engine with its weight push, multi-turn agent rollouts (IH-GRPO's
delayed tool execution) on vLLM, and DeepSpeed ZeRO-3 over NCCL through the `deepspeed` launcher. Skipped where there is no CUDA device (CI has none); on a GPU machine:

    pip install -e '.[dev,gpu]' && python -m pytest tests/e2e/test_gpu_path.py -v
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import LiveServer
from tests.integration.test_trainer_loop import letter_share, make_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards

# gpu: tests/conftest.py skips these without a CUDA device (the only skips CI allows).
pytestmark = [pytest.mark.slow, pytest.mark.gpu, pytest.mark.timeout(900)]  # a hang guard, not a check
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def gpu_config(tmp_path: Path, name: str, **overrides: object) -> object:
    return make_config(tmp_path, name, device="cuda", max_steps=3, group_size=8, prompts_per_step=4,
                       max_completion_length=16,
                       model={"tiny": {"seed": 0, "hidden_size": 128, "num_heads": 4, "num_kv_heads": 2},
                              "dtype": "bfloat16", "gradient_checkpointing": True}, **overrides)


def test_bf16_gradient_checkpointing_and_attention_on_cuda(tmp_path: Path) -> None:
    trainer = GRPOTrainer(gpu_config(tmp_path, "cuda"), rewards=CallableRewards(letter_share))
    assert next(trainer.model.parameters()).device.type == "cuda"
    expected = "flash_attention_2" if HAS_FLASH else trainer.model.config._attn_implementation
    assert trainer.model.config._attn_implementation == expected
    outcome = trainer.train()
    assert outcome.status == "succeeded"
    assert all(math.isfinite(m["loss"]) for m in outcome.history)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the gpu extra)")
def test_vllm_engine_samples_and_receives_the_weights(tmp_path: Path) -> None:
    trainer = GRPOTrainer(gpu_config(tmp_path, "vllm", engine="vllm"), rewards=CallableRewards(letter_share))
    outcome = trainer.train()
    assert outcome.status == "succeeded" and outcome.history[-1]["tokens_per_s"] > 0
    # After the last step the engine's embedding is the policy's (vLLM keeps it in bf16).
    engine_model = trainer.engine._model()  # type: ignore[attr-defined]
    pushed = dict(engine_model.named_parameters())["model.embed_tokens.weight"]
    policy = trainer.model.get_input_embeddings().weight
    assert torch.allclose(pushed.float().cpu(), policy.float().cpu(), atol=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_zero3_over_nccl(live_server: LiveServer, tmp_path: Path) -> None:
    from tests.integration.test_deepspeed_train import launch, write_config

    ranks = min(2, torch.cuda.device_count())
    config = write_config(tmp_path / "z3", live_server.url, stage=3, device="cuda", beta=0.05,
                          model={"tiny": {"seed": 0}, "dtype": "bfloat16"}, prompts_per_step=4 * ranks)
    env_ranks = ["--num-gpus", str(ranks)]
    if ranks == 1:  # launch() asks for 2 ranks; one GPU runs one
        result = subprocess.run([sys.executable, "-m", "rewardhub.cli", "train", str(config), *env_ranks],
                                env={**os.environ, "RH_DS_KEY": live_server.tenant.keys["trainer"]},
                                capture_output=True, text=True, timeout=800)
        assert result.returncode == 0, result.stderr[-6000:]
    else:
        launch(config, live_server.tenant.keys["trainer"])
    logged = [json.loads(line) for line in (tmp_path / "z3" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    assert logged[-1]["kl"] >= 0 and all(math.isfinite(m["loss"]) for m in logged)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (the gpu extra)")
def test_multi_turn_delayed_run_on_vllm(tmp_path: Path) -> None:
    from trainer.agent.toy import build_tool_model, problems, score, warm_up
    from trainer.config import parse_config

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

"""`rewardhub train --num-gpus 2` with a deepspeed section: two ranks under the real `deepspeed`
launcher, ZeRO-2 and ZeRO-3 on DeepSpeed's CPU accelerator (gloo), rewards over HTTP.

Each launch starts two Python processes that import torch, transformers and DeepSpeed, so the
runs are few and short; what they check is what data parallelism can get wrong: the ranks agree
on every step, the main rank alone logs, and a sharded checkpoint resumes exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import SQLITE_ONLY, LiveServer, require_module
from trainer.distributed import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
deepspeed = require_module("deepspeed", "DeepSpeed (dev extra)")


def write_config(folder: Path, url: str, *, stage: int, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "digits.jsonl").write_text("\n".join(
        json.dumps({"prompt": f"Say a number with 7 ({i}):", "reward_model": {"ground_truth": "7"}})
        for i in range(16)) + "\n")
    config = {"model": {"tiny": {"seed": 0}}, "dataset": "digits.jsonl", "output_dir": "run",
              "reward": {"spec": {"type": "regex", "pattern": "o"}, "url": url, "api_key_env": "RH_DS_KEY"},
              "deepspeed": {"zero_stage": stage}, "group_size": 4, "prompts_per_step": 4, "max_steps": 2,
              "max_completion_length": 6, "learning_rate": 1e-2, "seed": 3, **overrides}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update({"RH_DS_KEY": key, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    command = [sys.executable, "-m", "rewardhub.cli", "train", str(config), "--num-gpus", "2",
               "--master-port", str(free_port()), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@SQLITE_ONLY
def test_zero2_two_ranks_train_log_once_and_checkpoint(live_server: LiveServer, tmp_path: Path) -> None:
    config = write_config(tmp_path / "z2", live_server.url, stage=2, loss_type="dapo", scale_rewards="batch",
                          dynamic_sampling=True, max_resample_rounds=1)
    launch(config, live_server.tenant.keys["trainer"])
    run = tmp_path / "z2" / "run"
    logged = metrics(run)
    assert [m["step"] for m in logged] == [1, 2]  # the main rank alone writes, once per step
    # Both ranks' rollouts are counted: 4 prompts per step over 2 ranks, at least once each.
    assert all(m["prompts_drawn"] >= 4 for m in logged)
    assert all(0.0 <= m["reward_mean"] <= 1.0 and m["non_ok_share"] == 0.0 for m in logged)
    step = run / "checkpoints" / "step-000002"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert {p.name for p in step.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert json.loads((step / "state.json").read_text())["world_size"] == 2
    # model.pt is the full state dict, loadable without DeepSpeed, and it moved from the start.
    trained = torch.load(step / "model.pt", weights_only=True)
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(str(run / "base-model"), local_files_only=True).state_dict()
    assert set(trained) >= {k for k in initial if not k.endswith("lm_head.weight")}
    assert any(not torch.equal(trained[k], initial[k]) for k in trained if k in initial)


@SQLITE_ONLY
def test_zero3_resume_takes_the_same_next_step(live_server: LiveServer, tmp_path: Path) -> None:
    key = live_server.tenant.keys["trainer"]
    # Every parameter really sharded (the tiny model's would all sit under the persistence
    # threshold), and dynamic sampling, so ranks generate different numbers of times.
    settings = {"beta": 0.05, "dynamic_sampling": True, "max_resample_rounds": 2,
                "deepspeed": {"zero_stage": 3, "overrides": {"zero_optimization": {
                    "stage3_param_persistence_threshold": 0}}}}
    straight = write_config(tmp_path / "straight", live_server.url, stage=3, max_steps=3, **settings)
    launch(straight, key)
    interrupted = write_config(tmp_path / "interrupted", live_server.url, stage=3, max_steps=2, **settings)
    launch(interrupted, key)
    interrupted.write_text(interrupted.read_text().replace("max_steps: 2", "max_steps: 3"))
    launch(interrupted, key)

    expected = metrics(tmp_path / "straight" / "run")
    resumed = metrics(tmp_path / "interrupted" / "run")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    for name in ("loss", "reward_mean", "kl"):
        assert resumed[2][name] == pytest.approx(expected[2][name], abs=1e-6), name
    assert expected[2]["kl"] > 0  # the sharded reference model is in play
    # The consolidated model.pt holds whole tensors, gathered from both ranks' shards.
    run = tmp_path / "interrupted" / "run"
    full = torch.load(run / "checkpoints" / "step-000003" / "model.pt", weights_only=True)
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(str(run / "base-model"), local_files_only=True).state_dict()
    assert {k: v.shape for k, v in full.items() if k in initial} == \
        {k: v.shape for k, v in initial.items() if k in full}
    assert len(full) >= len(initial) - 1  # a tied lm_head may be left out

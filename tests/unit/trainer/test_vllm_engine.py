"""The vLLM rollout engine's control flow, against a scripted vLLM test double.

No GPU and no vLLM here: ``ScriptedVLLM`` stands in for the ``vllm`` module (``LLM`` and
``SamplingParams``) and records what the engine asks of it. What this checks is our side: the
engine options, the grouping of the n samples per prompt, truncation flags, and that weights are
pushed into the engine's model after every step (and the prefix cache dropped).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.test_trainer_loop import letter_share, make_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards
from trainer.rollout import SamplingSettings, VLLMEngine


class ScriptedModel:
    def __init__(self) -> None:
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights: Any) -> None:
        self.loads.append({name: tensor.clone() for name, tensor in weights})


class ScriptedLLM:
    """Test double of ``vllm.LLM``: sample k of a prompt starting with token p0 is k + 1 tokens
    (p0 + k) % 100, with the text "a" * k + "k" (rewards differ within a group); odd k hit the limit."""

    instances: list[ScriptedLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.model = ScriptedModel()
        self.prefix_resets = 0
        runner = types.SimpleNamespace(model=self.model)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
        self.requests: list[tuple[list[dict[str, list[int]]], Any]] = []
        ScriptedLLM.instances.append(self)

    def generate(self, prompts: list[dict[str, list[int]]], params: Any, use_tqdm: bool) -> list[Any]:
        self.requests.append((prompts, params))
        outputs = []
        for prompt in prompts:
            first = prompt["prompt_token_ids"][0]
            samples = [types.SimpleNamespace(token_ids=[(first + k) % 100] * (1 + k), text="a" * k + str(k),
                                             finish_reason="length" if k % 2 else "stop")
                       for k in range(params.kwargs["n"])]
            outputs.append(types.SimpleNamespace(outputs=samples))
        return outputs

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1


class ScriptedSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def scripted_vllm(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedLLM]:
    module = types.ModuleType("vllm")
    module.LLM = ScriptedLLM  # type: ignore[attr-defined]
    module.SamplingParams = ScriptedSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    ScriptedLLM.instances.clear()
    return ScriptedLLM


def test_options_grouping_and_truncation(scripted_vllm: type[ScriptedLLM]) -> None:
    import os

    engine = VLLMEngine("/models/policy", tokenizer=None, gpu_memory_utilization=0.4, dtype="float32",
                        rank=3, distributed=True)
    llm = scripted_vllm.instances[0]
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine's model must live in this process
    assert llm.kwargs["model"] == "/models/policy" and llm.kwargs["gpu_memory_utilization"] == 0.4
    assert llm.kwargs["dtype"] == "bfloat16"  # vLLM samples in 16 bits even for a float32 policy
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher" and llm.kwargs["seed"] == 3

    rollouts = engine.generate([[10, 11], [20]], SamplingSettings(group_size=3, max_new_tokens=5,
                                                                  temperature=0.7, top_p=0.9), seed=42)
    (prompts, params), = llm.requests
    assert prompts == [{"prompt_token_ids": [10, 11]}, {"prompt_token_ids": [20]}]
    # Every sampling field explicit (vLLM's top_k -1 is off), whatever the model folder's generation config says.
    assert params.kwargs == {"n": 3, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0,
                             "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                             "max_tokens": 5, "seed": 42, "stop_token_ids": []}
    assert llm.kwargs["generation_config"] == "vllm"  # not the model folder's sampling defaults
    assert [(r.prompt_index, r.prompt_ids, r.completion_ids, r.truncated) for r in rollouts] == [
        (0, [10, 11], [10], False), (0, [10, 11], [11, 11], True), (0, [10, 11], [12, 12, 12], False),
        (1, [20], [20], False), (1, [20], [21, 21], True), (1, [20], [22, 22, 22], False)]


def test_single_gpu_needs_no_external_launcher(scripted_vllm: type[ScriptedLLM]) -> None:
    VLLMEngine("/models/policy", tokenizer=None)
    assert "distributed_executor_backend" not in scripted_vllm.instances[0].kwargs


def test_trainer_pushes_its_weights_after_every_step(scripted_vllm: type[ScriptedLLM], tmp_path: Path) -> None:
    config = make_config(tmp_path, "vllm-double", max_steps=2)
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share), engine=None)
    engine = VLLMEngine(str(tmp_path / "vllm-double" / "base-model"), trainer.tokenizer)
    trainer.engine = engine
    llm = scripted_vllm.instances[0]
    snapshots = []
    for _ in range(2):
        trainer.train_step()
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    assert len(llm.model.loads) == 2 and llm.prefix_resets == 2
    for loaded, weights in zip(llm.model.loads, snapshots, strict=True):
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[name], weights[name]) for name in weights)
    assert any(not torch.equal(llm.model.loads[0][k], llm.model.loads[1][k]) for k in snapshots[0])


def test_every_eos_id_stops_a_vllm_completion(scripted_vllm: type[ScriptedLLM], tmp_path: Path) -> None:
    import json

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 4], "top_k": 20,
                                                                 "repetition_penalty": 1.05}))
    engine = VLLMEngine(str(tmp_path), tokenizer=types.SimpleNamespace(eos_token_id=4))
    assert engine.eos_ids == [4, 7]  # the tokenizer's first, then the generation config's
    engine.generate([[1]], SamplingSettings(group_size=2, max_new_tokens=3), seed=0)
    (_, params), = scripted_vllm.instances[0].requests
    assert params.kwargs["stop_token_ids"] == [4, 7]
    assert (params.kwargs["top_k"], params.kwargs["repetition_penalty"], params.kwargs["min_p"]) == (-1, 1.0, 0.0)

"""Run configs: valid ones load from a dict or YAML; bad ones fail before anything runs, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.config import ConfigError, RunConfig, load_config, parse_config


def base(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "data.jsonl"}
    config.update(overrides)
    return config


def test_defaults_and_derived_sizes() -> None:
    config = parse_config(base(group_size=4, prompts_per_step=6, mini_batches=2, gradient_accumulation=3))
    assert isinstance(config, RunConfig)
    assert config.rollouts_per_step == 24
    assert config.micro_batch_size == 4  # 24 rollouts / (2 mini-batches x 3 micro-batches)
    assert (config.epsilon_low, config.epsilon_high, config.beta, config.loss_type) == (0.2, 0.28, 0.0, "dapo")
    assert config.reward is None


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"group_size": 1}, "group_size", "greater than or equal to 2"),
    ({"epsilon_low": 0.3, "epsilon_high": 0.2}, "epsilon_high", "must be >= epsilon_low"),
    ({"prompts_per_step": 3, "group_size": 3, "mini_batches": 2}, "mini_batches", "divide evenly"),
    ({"gradient_accumulation": 5}, "mini_batches", "divide evenly"),
    ({"learning_rate": 0}, "learning_rate", "greater than 0"),
    ({"loss_type": "ppo"}, "loss_type", "'grpo', 'dr_grpo', 'dapo' or 'bnpo'"),
    ({"scale_rewards": "rank"}, "scale_rewards", "'group', 'batch' or 'none'"),
    ({"lr_schedule": "step"}, "lr_schedule", "'constant', 'linear' or 'cosine'"),
    ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"warmup_steps": 10, "max_steps": 10}, "warmup_steps", "smaller than max_steps"),
    ({"overlong": {"enabled": True, "cache_length": 64}, "max_completion_length": 64},
     "overlong.cache_length", "smaller than max_completion_length"),
    ({"batch_size": 8}, "batch_size", "Extra inputs are not permitted"),
    ({"model": {"tiny": {}, "path": "/models/x"}}, "model", "exactly one of model.path"),
    ({"model": {}}, "model", "exactly one of model.path"),
    ({"model": {"tiny": {"hidden_size": 60, "num_heads": 8}}}, "model.tiny", "multiple of num_heads"),
    ({"engine": "vllm"}, "engine", "needs a GPU"),
    ({"reward": {"spec": {"type": "nope"}}}, "reward.spec", "not a valid reward spec"),
    ({"reward": {"spec": {"type": "regex", "pattern": "("}}}, "reward.spec", "not a valid regular expression"),
    ({"reward": {"spec": "not a ref!"}}, "reward.spec", "name@version"),
    ({"reward": {"spec": "gsm8k@2", "concurrency": 0}}, "reward.concurrency", "greater than or equal to 1"),
    ({"deepspeed": {"zero_stage": 1}}, "deepspeed.zero_stage", "2 or 3"),
    ({"deepspeed": {"zero_stage": 2, "offload_params": True}}, "deepspeed", "needs zero_stage 3"),
    ({"deepspeed": {"zero": 3}}, "deepspeed.zero", "Extra inputs are not permitted"),
    ({"deepspeed": {"overrides": {"zero_optimization": {"stage": 3}}}}, "deepspeed.overrides",
     "zero_optimization.stage follows from deepspeed.zero_stage; set that instead"),
    ({"deepspeed": {"overrides": {"gradient_accumulation_steps": 4}}}, "deepspeed.overrides",
     "gradient_accumulation_steps follows from gradient_accumulation"),
    ({"deepspeed": {}, "device": "cuda:1"}, "device", "must be 'cuda'"),
    ({"model": {"tiny": {}, "attn_implementation": "flash_attention_2"}}, "model.attn_implementation",
     "needs a GPU"),
    ({"model": {"tiny": {}, "attn_implementation": "flash_attention_2"}, "device": "cuda"},
     "model.attn_implementation", "bfloat16 or float16"),
    ({"vllm_gpu_memory_utilization": 1.0}, "vllm_gpu_memory_utilization", "less than 1"),
])
def test_bad_settings_name_the_field(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(base(**overrides))
    message = str(error.value)
    assert message.startswith(f"{field}") or f"; {field}" in message, message
    assert words in message, message


def test_reward_spec_forms() -> None:
    stored = parse_config(base(reward={"spec": " gsm8k@2 "}))
    assert stored.reward is not None and stored.reward.spec == "gsm8k@2"
    inline = parse_config(base(reward={"spec": {"type": "regex", "pattern": "7"}}))
    assert inline.reward is not None and isinstance(inline.reward.spec, dict)
    # Validated against the reward-spec schema and stored with its defaults, ready to send as-is.
    assert inline.reward.spec["pattern"] == "7" and inline.reward.spec["full_match"] is False


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="config: expected a mapping"):
        parse_config(["model"])  # type: ignore[arg-type]


def test_yaml_file_with_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  path: models/tiny\ndataset: data/train.jsonl\noutput_dir: out\n"
                    "group_size: 4\nreward:\n  spec: {type: exact}\n")
    config = load_config(path)
    assert config.dataset == str(tmp_path / "data/train.jsonl")
    assert config.model.path == str(tmp_path / "models/tiny")
    assert config.output_dir == str(tmp_path / "out")
    assert config.group_size == 4


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="mapping of settings"):
        load_config(scalar)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: {tiny: {}}\ndataset: d.jsonl\ngroup_sise: 4\n")
    with pytest.raises(ConfigError, match="group_sise: Extra inputs are not permitted"):
        load_config(unknown)

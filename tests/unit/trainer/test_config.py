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
    ({"loss_type": "ppo"}, "loss_type", "'grpo', 'dr_grpo', 'dapo', 'bnpo', 'seq_mean_token_sum' or 'cispo'"),
    ({"scale_rewards": "rank"}, "scale_rewards", "'group', 'batch', 'none', 'rloo', 'reinforce_pp' or "
                                                 "'reinforce_pp_baseline'"),
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


# ---------------------------------------------------------------- loss and advantage options (issue 13)


def test_loss_option_defaults_follow_trl_and_verl() -> None:
    config = parse_config(base())
    assert (config.num_iterations, config.mask_truncated_completions, config.importance_sampling_level) == (
        1, False, "token")
    assert (config.advantage_epsilon, config.kl_estimator, config.kl_in_reward) == (1e-4, "k3", False)
    assert (config.log_ratio_clamp, config.kl_clamp) == (20.0, 10.0)  # veRL's clamps
    assert (config.entropy_coef, config.cispo_epsilon_low, config.cispo_epsilon_high) == (0.0, None, 4.0)
    assert config.rollout_is_cap is None


def test_gspo_and_advantage_epsilon_are_accepted() -> None:
    # Both used to fail as unknown keys ("Extra inputs are not permitted"): the fields did not exist.
    config = parse_config(base(importance_sampling_level="sequence", advantage_epsilon=0.5, num_iterations=3,
                               mini_batches=2, prompts_per_step=2, group_size=4))
    assert config.importance_sampling_level == "sequence" and config.advantage_epsilon == 0.5
    assert config.optimizer_steps_per_rollout_batch == 6  # 3 passes x 2 mini-batches


def test_loss_options_accept_their_choices() -> None:
    config = parse_config(base(loss_type="cispo", cispo_epsilon_low=0.5, cispo_epsilon_high=1.0, kl_estimator="k1",
                               beta=0.1, kl_in_reward=True, scale_rewards="reinforce_pp_baseline",
                               entropy_coef=0.01, mask_truncated_completions=True, log_ratio_clamp=None,
                               kl_clamp=None))
    assert config.loss_type == "cispo" and config.kl_in_reward and config.log_ratio_clamp is None
    vllm = parse_config(base(engine="vllm", device="cuda", rollout_is_cap=3.0))
    assert vllm.rollout_is_cap == 3.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"importance_sampling_level": "word"}, "importance_sampling_level: Input should be 'token' or 'sequence'"),
    ({"kl_estimator": "k4"}, "kl_estimator: must be one of 'k1', 'k2' or 'k3', got 'k4'"),
    ({"kl_in_reward": True}, "kl_in_reward: needs beta > 0"),
    ({"rollout_is_cap": 2.0}, "rollout_is_cap: corrects for vLLM's sampling, so it needs engine: vllm"),
    ({"rollout_is_cap": 0.0, "engine": "vllm", "device": "cuda"}, "rollout_is_cap: Input should be greater than 0"),
    ({"loss_type": "cispo", "dual_clip_c": 3.0}, "dual_clip_c: applies to the clipped surrogate"),
    ({"num_iterations": 0}, "num_iterations: Input should be greater than or equal to 1"),
    ({"advantage_epsilon": -1e-4}, "advantage_epsilon: Input should be greater than or equal to 0"),
    ({"log_ratio_clamp": 0}, "log_ratio_clamp: Input should be greater than 0"),
    ({"kl_clamp": -1}, "kl_clamp: Input should be greater than 0"),
    ({"entropy_coef": -0.1}, "entropy_coef: Input should be greater than or equal to 0"),
    ({"cispo_epsilon_low": 1.5}, "cispo_epsilon_low: Input should be less than or equal to 1"),
    ({"cispo_epsilon_high": 0}, "cispo_epsilon_high: Input should be greater than 0"),
    ({"scale_rewards": "ppo"}, "scale_rewards: must be one of"),
])
def test_bad_loss_options_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(base(**overrides))
    assert message in str(error.value)
    assert "\n" not in str(error.value)

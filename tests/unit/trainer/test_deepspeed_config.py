"""The DeepSpeed JSON generated from a run config, and the checks on the number of ranks."""

from __future__ import annotations

import re
from typing import Any

import pytest

from trainer.config import parse_config
from trainer.distributed import Collective, check_world_size, deepspeed_config, reference_config


def run(**overrides: Any) -> Any:
    settings: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "data.jsonl", "group_size": 8,
                                "prompts_per_step": 8, "mini_batches": 2, "gradient_accumulation": 2,
                                "deepspeed": {"zero_stage": 2}}
    settings.update(overrides)
    return parse_config(settings)


def test_zero2_sizes_are_per_rank() -> None:
    # 8 prompts x 8 rollouts = 64 per step; 4 ranks -> 16 each; 2 mini-batches x 2 micro -> 4 per micro-batch.
    config = deepspeed_config(run(max_grad_norm=0.5), world_size=4)
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 4 * 2 * 4  # DeepSpeed checks micro x accumulation x ranks
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}
    assert config["bf16"] == {"enabled": False} and config["fp16"] == {"enabled": False}
    assert "optimizer" not in config  # the loop's torch AdamW is handed in


def test_zero3_offload_bf16_and_overrides() -> None:
    config = deepspeed_config(run(model={"tiny": {}, "dtype": "bfloat16"}, max_grad_norm=None, learning_rate=3e-6,
                                  deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True,
                                             "overrides": {"zero_optimization": {"reduce_bucket_size": 1000},
                                                           "steps_per_print": 10}}), world_size=2)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}  # no pinning on a CPU device
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert zero["reduce_bucket_size"] == 1000 and zero["overlap_comm"] is True  # merged, not replaced
    assert config["steps_per_print"] == 10
    assert config["bf16"] == {"enabled": True}
    assert config["gradient_clipping"] == 0.0  # max_grad_norm: null turns clipping off
    # An offloaded optimizer must be DeepSpeed's CPU Adam, built from the config.
    assert config["optimizer"] == {"type": "AdamW", "params": {"lr": 3e-6, "weight_decay": 0.0}}
    reference = reference_config(config)
    assert "offload_optimizer" not in reference["zero_optimization"]
    assert reference["zero_optimization"]["stage"] == 3 and "optimizer" not in reference


@pytest.mark.parametrize(("world", "words"), [
    (3, "prompts_per_step: 8 must be a multiple of the number of ranks (3)"),
    (8, "each rank's 2 rollouts must divide into mini_batches x gradient_accumulation (4)"),
])
def test_world_size_must_split_the_batch(world: int, words: str) -> None:
    # 8 ranks: 8 prompts x 2 rollouts = 16, 2 per rank, fewer than the 4 micro-batches.
    config = run(group_size=2) if world == 8 else run()
    with pytest.raises(ValueError, match=re.escape(words)):
        check_world_size(config, world)


def test_a_world_of_one_is_the_identity() -> None:
    one = Collective()
    assert one.is_main and not one.distributed
    assert one.all_gather({"a": 1}) == [{"a": 1}]
    assert one.max_int(3) == 3 and one.any(False) is False
    assert one.mean_metrics({"loss": 0.5}) == {"loss": 0.5}


def test_vllm_with_dynamic_sampling_needs_one_rank() -> None:
    config = run(engine="vllm", device="cuda", dynamic_sampling=True)
    check_world_size(config, 1)
    with pytest.raises(ValueError, match="dynamic_sampling: not supported with engine vllm on several ranks"):
        check_world_size(config, 2)

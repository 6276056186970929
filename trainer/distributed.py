"""Data parallelism: the collectives the training loop needs, and the DeepSpeed ZeRO configuration.

A run with a ``deepspeed`` section is launched once per rank (``rewardhub train --num-gpus N``
runs the ``deepspeed`` launcher). Every rank holds the same prompt sampler: each draw takes what the ranks need
together (one small all-gather of the counts) and rank r keeps its slice.
Rewards and metrics are gathered so that every rank computes the same group advantages and the
main rank logs global numbers.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, TypeVar

import torch

from trainer.config import RunConfig

T = TypeVar("T")


class Collective:
    """The few collectives the loop needs; a world of one (no process group) is the identity."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order (picklable objects)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def max_int(self, value: int) -> int:
        return max(self.all_gather(int(value)))

    def any(self, flag: bool) -> bool:
        return bool(self.max_int(int(flag)))

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the ranks that reported it."""
        if not self.distributed:
            return metrics
        merged: dict[str, list[float]] = {}
        for part in self.all_gather(metrics):
            for name, value in part.items():
                merged.setdefault(name, []).append(value)
        return {name: sum(values) / len(values) for name, values in merged.items()}


def init_collective(config: RunConfig) -> Collective:
    """Join the launcher's process group (a DeepSpeed run), or stand alone."""
    if config.deepspeed is None:
        return Collective()
    import deepspeed

    if "RANK" not in os.environ:
        # Started without a launcher (the run service, a plain `python`): a world of one rank,
        # which still gets ZeRO-Offload and DeepSpeed's mixed precision.
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())})

    if config.device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
        _skip_cpu_shm_op()
    deepspeed.init_distributed(dist_backend=backend)
    atexit.register(_destroy_process_group)
    return Collective(torch.distributed.get_rank(), torch.distributed.get_world_size())


def _destroy_process_group() -> None:
    """At exit, before the interpreter tears down: a process group left to static destruction now and
    then aborts a rank that has finished ("terminate called without an active exception", status -6)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _skip_cpu_shm_op() -> None:
    # On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce at start (about 45 s
    # on 2 cores, and again whenever its compiler flags change); gloo does the same reductions.
    # DeepSpeed keeps its op table in one dict precisely so that entries can be switched off.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def device_for_rank(config: RunConfig) -> str:
    """``cuda`` becomes ``cuda:<local rank>`` in a launched run; other devices pass through."""
    if config.deepspeed is not None and config.device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return config.device


def check_world_size(config: RunConfig, world_size: int) -> None:
    """The global batch must split evenly over the ranks and, on each, into micro-batches."""
    if config.prompts_per_step % world_size:
        raise ValueError(f"prompts_per_step: {config.prompts_per_step} must be a multiple of the number of "
                         f"ranks ({world_size})")
    if world_size > 1 and config.engine == "vllm" and config.dynamic_sampling:
        # Ranks refill different numbers of groups, so they would call vLLM a different number of
        # times, and vLLM's external launcher runs its ranks in lockstep.
        raise ValueError("dynamic_sampling: not supported with engine vllm on several ranks")
    per_rank = config.rollouts_per_step // world_size
    micro = config.mini_batches * config.gradient_accumulation
    if per_rank % micro:
        raise ValueError(f"mini_batches: each rank's {per_rank} rollouts must divide into mini_batches x "
                         f"gradient_accumulation ({micro}) micro-batches")


def deepspeed_config(config: RunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON for ``config`` on ``world_size`` ranks, with the user's overrides merged last.

    The loss is already divided per micro-batch the way ``loss_type`` asks, so DeepSpeed is told
    the micro-batch and accumulation sizes only to place its optimizer-step boundaries.
    """
    assert config.deepspeed is not None
    settings = config.deepspeed
    check_world_size(config, world_size)
    micro = config.rollouts_per_step // world_size // (config.mini_batches * config.gradient_accumulation)
    zero: dict[str, Any] = {"stage": settings.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": config.device.startswith("cuda")}
    if settings.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": config.device.startswith("cuda")}
    if settings.zero_stage == 3:
        # Lets save_16bit_model write one consolidated state dict next to the sharded checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "train_batch_size": micro * config.gradient_accumulation * world_size,
        "gradient_clipping": config.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": config.model.dtype == "bfloat16"},
        "fp16": {"enabled": config.model.dtype == "float16"},
        # A torch AdamW is passed in unless the optimizer is offloaded (then DeepSpeed's CPU Adam).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if settings.offload_optimizer:
        generated["optimizer"] = {"type": "AdamW", "params": {"lr": config.learning_rate,
                                                              "weight_decay": config.weight_decay}}
    return _merge(generated, settings.overrides)


def reference_config(policy_config: dict[str, Any]) -> dict[str, Any]:
    """A frozen ZeRO-3 copy for the reference model: sharded like the policy, no optimizer."""
    zero = {key: value for key, value in policy_config["zero_optimization"].items()
            if key not in ("offload_optimizer",)}
    return {"train_micro_batch_size_per_gpu": policy_config["train_micro_batch_size_per_gpu"],
            "gradient_accumulation_steps": policy_config["gradient_accumulation_steps"],
            "train_batch_size": policy_config["train_batch_size"], "zero_optimization": zero,
            "bf16": policy_config["bf16"], "fp16": policy_config["fp16"], "steps_per_print": 2**31 - 1}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

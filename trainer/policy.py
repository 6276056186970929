"""The trained policy with its optimizer: one process (torch) or DeepSpeed ZeRO across ranks.

Both expose the same small surface to the loop: the module to run forward, ``backward``,
``micro_step`` (an optimizer step at each accumulation boundary), a context for reading the
full weights (ZeRO-3 gathers its shards), and checkpoint save/load.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint
from trainer.config import RunConfig
from trainer.distributed import Collective, reference_config


def lr_lambda(config: RunConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``n`` optimizer steps, as transformers' schedules.

    With W = warmup optimizer steps and N = total optimizer steps (steps x num_iterations x mini_batches):
    warm-up n / W for n < W (0 at the first step, as ``get_*_schedule_with_warmup``), then with
    p = (n − W) / max(1, N − W): constant 1, linear max(0, 1 − p), cosine max(0, ½(1 + cos πp)).
    """
    per_step = config.optimizer_steps_per_rollout_batch
    total = config.max_steps * per_step
    warmup = config.warmup_steps * per_step

    def factor(n: int) -> float:
        if n < warmup:
            return n / warmup
        if config.lr_schedule == "constant":
            return 1.0
        if config.lr_schedule == "linear":  # (N − n) / (N − W) = 1 − p, written as transformers does
            return max(0.0, (total - n) / max(1, total - warmup))
        progress = (n - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class LocalPolicy:
    """One process: the model, a torch AdamW and a LambdaLR schedule."""

    def __init__(self, model: Any, config: RunConfig) -> None:
        self.config = config
        self.module = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # type: ignore[no-untyped-call]

    def micro_step(self, boundary: bool) -> float | None:
        """After each micro-batch; at a boundary clip, step and clear the gradients, returning their norm."""
        if not boundary:
            return None
        norm = None
        if self.config.max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def gathered(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @property
    def forward_model(self) -> Any:
        return self.module

    def save(self, directory: Path, state: checkpoint.TrainingState, *,
             write_extra: Callable[[Path], object] | None = None) -> Path:
        return checkpoint.save(directory, model=self.module, optimizer=self.optimizer, scheduler=self.scheduler,
                               state=state, save_total_limit=self.config.save_total_limit, write_extra=write_extra)

    def load(self, path: Path) -> checkpoint.TrainingState:
        return checkpoint.load(path, model=self.module, optimizer=self.optimizer, scheduler=self.scheduler)


class DeepSpeedPolicy:
    """The policy wrapped by ``deepspeed.initialize`` (ZeRO-2 or ZeRO-3) on every rank."""

    def __init__(self, model: Any, config: RunConfig, collective: Collective, ds_config: dict[str, Any]) -> None:
        import deepspeed

        assert config.deepspeed is not None
        self.config = config
        self.collective = collective
        self.ds_config = ds_config
        optimizer = None
        if "optimizer" not in self.ds_config:
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                          weight_decay=config.weight_decay)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config)))
        self.module = self.engine.module
        self.forward_model = self.engine  # DeepSpeed expects training forwards through its engine
        self.zero3 = config.deepspeed.zero_stage == 3

    def backward(self, loss: torch.Tensor) -> None:
        # The loop has already divided the loss over accumulation the way loss_type asks.
        self.engine.backward(loss, scale_wrt_gas=False)

    def micro_step(self, boundary: bool) -> float | None:
        # DeepSpeed counts micro-batches itself and steps the optimizer and schedule at its boundary.
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        if self.zero3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
                yield
        else:
            yield

    def save(self, directory: Path, state: checkpoint.TrainingState) -> Path:
        return checkpoint.save_sharded(directory, engine=self.engine, state=state, collective=self.collective,
                                       save_total_limit=self.config.save_total_limit)

    def load(self, path: Path) -> checkpoint.TrainingState:
        return checkpoint.load_sharded(path, engine=self.engine, collective=self.collective)


Policy = LocalPolicy | DeepSpeedPolicy


def frozen_copy(model: Any) -> Any:
    """The KL reference: a frozen copy of the initial policy (made before any wrapping)."""
    reference = copy.deepcopy(model)
    return _freeze(reference)


def sharded_reference(model: Any, policy: DeepSpeedPolicy) -> Any:
    """The KL reference under ZeRO-3: ``model`` (a fresh load) sharded like the policy, with no optimizer."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=_freeze(model), config=reference_config(policy.ds_config))
    return engine.module


def _freeze(model: Any) -> Any:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

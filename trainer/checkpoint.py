"""Checkpoints that resume exactly: model, optimizer, scheduler, every RNG, data position, step."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"


@dataclass
class TrainingState:
    step: int
    sampler: dict[str, int]
    extra: dict[str, Any]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainingState) -> Path:
    """Write ``step-N/`` atomically (temp dir + rename) and point ``latest`` at it."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state.step:06d}"
    tmp = directory / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": state.step, "sampler": state.sampler, "extra": state.extra}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (directory / LATEST).write_text(final.name)
    return final


def latest(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    path = directory / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler) -> TrainingState:
    if (path / "rng-rank0.pt").exists():
        raise ValueError(f"{path} is a DeepSpeed checkpoint; resume it with the deepspeed section and "
                         f"--num-gpus it was written with")
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    saved = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    meta = json.loads((path / "state.json").read_text())
    return TrainingState(step=meta["step"], sampler=meta["sampler"], extra=meta.get("extra", {}))


DEEPSPEED_TAG = "deepspeed"


def save_sharded(directory: Path, *, engine: Any, state: TrainingState, collective: Any) -> Path:
    """A DeepSpeed checkpoint: each rank's shards and RNG, one consolidated ``model.pt``, then ``latest``.

    Every rank calls this; the main rank alone creates, renames and points ``latest``, between barriers.
    """
    final = directory / f"step-{state.step:06d}"
    tmp = directory / f".tmp-step-{state.step:06d}"
    if collective.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    collective.barrier()
    engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG, save_latest=False)
    engine.save_16bit_model(str(tmp), "model.pt")  # loadable without DeepSpeed
    torch.save(rng_state(), tmp / f"rng-rank{collective.rank}.pt")
    collective.barrier()
    if collective.is_main:
        meta = {"step": state.step, "sampler": state.sampler, "extra": state.extra,
                "world_size": collective.world_size}
        (tmp / "state.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (directory / LATEST).write_text(final.name)
    collective.barrier()
    return final


def load_sharded(path: Path, *, engine: Any, collective: Any) -> TrainingState:
    meta = json.loads((path / "state.json").read_text())
    saved_world = meta.get("world_size")
    if saved_world is None:
        raise ValueError(f"{path} is a single-process checkpoint; resume it without deepspeed")
    if saved_world != collective.world_size:
        raise ValueError(f"{path} was written by {saved_world} ranks; resume it with --num-gpus {saved_world}")
    loaded, _ = engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    if loaded is None:
        raise ValueError(f"{path}: DeepSpeed found no checkpoint under tag {DEEPSPEED_TAG!r}")
    set_rng_state(torch.load(path / f"rng-rank{collective.rank}.pt", map_location="cpu", weights_only=False))
    return TrainingState(step=meta["step"], sampler=meta["sampler"], extra=meta.get("extra", {}))

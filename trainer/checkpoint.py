"""Checkpoints that resume exactly: model, optimizer, scheduler, every RNG, data position, step.

A checkpoint folder is written whole under a temporary name and renamed into place; the
``latest`` pointer is then replaced atomically (temp file, fsync, ``os.replace``, fsync of the
folder), so a crash at any moment leaves ``latest`` naming a complete checkpoint. With
``save_total_limit`` only the newest N checkpoints stay (never the one ``latest`` names).
Every seed the loop derives goes through :func:`derive_seed`, which stays in ``[0, 2^63)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest"
STEP_PREFIX = "step-"
REPLACED_PREFIX = ".replaced-"
_MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> int:
    """One SplitMix64 output for ``state`` (Steele, Lea & Flood 2014; Vigna's reference code)::

        z = state + 0x9E3779B97F4A7C15;  z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9
        z = (z ^ z >> 27) * 0x94D049BB133111EB;  return z ^ z >> 31      (all modulo 2^64)
    """
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """A seed in ``[0, 2^63)`` mixed from ``parts`` (run seed, step, round, rank...): h_0 = 0,
    h_i = splitmix64(h_{i-1} XOR (part_i mod 2^64)), seed = h_n >> 1.

    Unlike ``seed * 1_000_003 + step`` it never leaves the range ``torch.manual_seed``, a
    ``torch.Generator`` and vLLM accept, whatever the run seed, and nearby inputs give unrelated seeds.
    """
    h = 0
    for part in parts:
        h = splitmix64(h ^ (part & _MASK64))
    return h >> 1


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
         scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainingState,
         save_total_limit: int | None = None, write_extra: Callable[[Path], object] | None = None) -> Path:
    """Write ``step-N/`` atomically (temp dir + rename), point ``latest`` at it, prune to the limit.
    ``write_extra(folder)`` adds files of its own (the MTP head) before the folder is published."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state.step:06d}"
    tmp = directory / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "trainer_state.pt")
    if write_extra is not None:
        write_extra(tmp)
    (tmp / "state.json").write_text(json.dumps({"step": state.step, "sampler": state.sampler, "extra": state.extra}))
    _publish(directory, tmp, final, save_total_limit)
    return final


def _publish(directory: Path, tmp: Path, final: Path, save_total_limit: int | None) -> None:
    """Rename the finished temp folder into place, point ``latest`` at it, then prune."""
    _fsync_tree(tmp)
    aside = directory / f"{REPLACED_PREFIX}{final.name}"
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        # Re-saving a step (a resumed run): set the old copy aside rather than delete it, so that
        # ``latest`` still finds a complete checkpoint (there) if the process dies before the rename.
        os.replace(final, aside)
    os.replace(tmp, final)
    write_latest(directory, final.name)
    shutil.rmtree(aside, ignore_errors=True)
    if save_total_limit is not None:
        prune(directory, save_total_limit)


def _fsync_tree(folder: Path) -> None:
    """Flush a checkpoint's files to disk before the pointer can name it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_latest(directory: Path, name: str) -> None:
    """Replace the ``latest`` pointer atomically: readers see the old name or the new one, never a
    partial file, even if the process dies mid-write (temp file, fsync, ``os.replace``, fsync dir)."""
    tmp = directory / f".{LATEST}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, name.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / LATEST)
    _fsync_dir(directory)


def checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoints in ``directory`` (``step-N/`` with a ``state.json``), oldest first."""
    found = [path for path in directory.glob(f"{STEP_PREFIX}*")
             if path.is_dir() and path.name[len(STEP_PREFIX):].isdigit() and (path / "state.json").exists()]
    return sorted(found, key=lambda path: int(path.name[len(STEP_PREFIX):]))


def prune(directory: Path, save_total_limit: int) -> list[Path]:
    """Delete all but the newest ``save_total_limit`` checkpoints, never the one ``latest`` names;
    return the deleted folders. The pointer's checkpoint counts towards the limit."""
    if save_total_limit < 1:
        raise ValueError(f"save_total_limit must be at least 1, got {save_total_limit}")
    current = latest(directory)
    keep = set(checkpoints(directory)[-save_total_limit:])
    if current is not None and current not in keep:  # e.g. resumed from an older one: keep it instead
        keep = {current, *checkpoints(directory)[-(save_total_limit - 1):]} if save_total_limit > 1 else {current}
    deleted = [path for path in checkpoints(directory) if path not in keep]
    for path in deleted:
        shutil.rmtree(path)
    return deleted


def latest(directory: Path) -> Path | None:
    """The checkpoint ``latest`` names, or its set-aside copy if a crash came mid-replacement."""
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    for path in (directory / name, directory / f"{REPLACED_PREFIX}{name}"):
        if name and (path / "state.json").exists():
            return path
    return None


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


def save_sharded(directory: Path, *, engine: Any, state: TrainingState, collective: Any,
                 save_total_limit: int | None = None) -> Path:
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
        _publish(directory, tmp, final, save_total_limit)
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

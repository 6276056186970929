"""Checkpoint files: the atomic ``latest`` pointer, ``save_total_limit`` pruning, and crashes at each
point of a save (simulated deterministically by making one filesystem call fail)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import checkpoint


class Crash(RuntimeError):
    """Stands for the process dying at that call."""


def _parts() -> tuple[torch.nn.Linear, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 1.0)


def _save(directory: Path, step: int, limit: int | None = None, *, weight: float | None = None) -> Path:
    model, optimizer, scheduler = _parts()
    with torch.no_grad():
        model.weight.fill_(float(step) if weight is None else weight)
    return checkpoint.save(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                           state=checkpoint.TrainingState(step=step, sampler={"position": step}, extra={}),
                           save_total_limit=limit)


def _weight(path: Path) -> float:
    model, optimizer, scheduler = _parts()
    checkpoint.load(path, model=model, optimizer=optimizer, scheduler=scheduler)
    return float(model.weight[0, 0].detach())


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_save_total_limit_keeps_the_newest(tmp_path: Path) -> None:
    for step in range(1, 6):
        _save(tmp_path, step, limit=2)
    assert _names(tmp_path) == ["latest", "step-000004", "step-000005"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000005"
    assert _weight(tmp_path / "step-000005") == 5.0


def test_no_limit_keeps_everything(tmp_path: Path) -> None:
    for step in range(1, 4):
        _save(tmp_path, step)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000001", "step-000002", "step-000003"]


def test_prune_never_deletes_the_checkpoint_latest_names(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    checkpoint.write_latest(tmp_path, "step-000001")  # e.g. a run resumed from step 1
    deleted = checkpoint.prune(tmp_path, 2)
    assert [p.name for p in deleted] == ["step-000002"]
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-000001", "step-000003"]
    assert [p.name for p in checkpoint.prune(tmp_path, 1)] == ["step-000003"]  # limit 1: only latest's own
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000001"
    with pytest.raises(ValueError, match="save_total_limit must be at least 1"):
        checkpoint.prune(tmp_path, 0)


def test_pointer_is_replaced_not_rewritten(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    inode = (tmp_path / "latest").stat().st_ino
    _save(tmp_path, 2)
    assert (tmp_path / "latest").read_text() == "step-000002"
    assert (tmp_path / "latest").stat().st_ino != inode  # a new file renamed over the old one
    assert not (tmp_path / ".latest.tmp").exists()


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str, when: Any) -> None:
    real = getattr(os, name)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise Crash(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


def test_crash_before_the_pointer_moves_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)
    _fail_on(monkeypatch, "replace", lambda src, dst: Path(dst).name == "latest")
    with pytest.raises(Crash):
        _save(tmp_path, 2)
    assert (tmp_path / "latest").read_text() == "step-000001"
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000001" and _weight(tmp_path / "step-000001") == 1.0
    monkeypatch.undo()
    _save(tmp_path, 2)  # the next save goes through; a stale pointer temp file does not get in the way
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000002"


def test_crash_while_writing_the_pointer_leaves_the_old_pointer_whole(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)
    # The new name is written to the temp file but never reaches the disk: the process dies in fsync.
    real_open = os.open
    opened: dict[int, str] = {}

    def tracking_open(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        opened[fd] = Path(path).name
        return fd

    monkeypatch.setattr(os, "open", tracking_open)
    _fail_on(monkeypatch, "fsync", lambda fd: opened.get(fd) == ".latest.tmp")
    with pytest.raises(Crash):
        _save(tmp_path, 2)
    assert (tmp_path / "latest").read_text() == "step-000001"
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000001"


def test_crash_while_resaving_a_step_keeps_a_complete_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 3, weight=1.5)
    # A resumed run saves step 3 again: the old copy is set aside, then the new one renamed in.
    _fail_on(monkeypatch, "replace", lambda src, dst: Path(src).name.startswith(".tmp-step-"))
    with pytest.raises(Crash):
        _save(tmp_path, 3, weight=2.5)
    assert not (tmp_path / "step-000003").exists()
    found = checkpoint.latest(tmp_path)
    assert found == tmp_path / ".replaced-step-000003" and _weight(found) == 1.5
    monkeypatch.undo()
    _save(tmp_path, 3, weight=2.5)
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000003" and _weight(tmp_path / "step-000003") == 2.5
    assert not (tmp_path / ".replaced-step-000003").exists()


def test_crash_mid_checkpoint_leaves_only_a_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)
    real_save = torch.save

    def dying_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "trainer_state.pt":
            raise Crash("torch.save")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Crash):
        _save(tmp_path, 2, limit=1)
    assert _names(tmp_path) == [".tmp-step-000002", "latest", "step-000001"]
    assert checkpoint.latest(tmp_path) == tmp_path / "step-000001"
    monkeypatch.undo()
    _save(tmp_path, 2, limit=1)
    assert _names(tmp_path) == ["latest", "step-000002"]


def test_latest_ignores_missing_or_empty_pointers(tmp_path: Path) -> None:
    assert checkpoint.latest(tmp_path) is None
    (tmp_path / "latest").write_text("")
    assert checkpoint.latest(tmp_path) is None
    (tmp_path / "latest").write_text("step-000009")
    assert checkpoint.latest(tmp_path) is None

"""The per-project registry of teacher models, kept as files (no database table).

A teacher model is registered under a name in a project and is one of two kinds:

- ``local``: a Hugging Face model folder under ``teacher_models_dir`` (a relative path; nothing is
  ever downloaded), read-only;
- ``ema``: a copy the trainer keeps updating. It starts as the folder's weights; the trainer pushes
  safetensors state dicts (``PUT …/weights``): with ``tau`` the service applies the EMA step
  ψ ← (1 − τ)ψ + τθ itself, without ``tau`` the upload replaces the weights (the policy's current
  weights as the teacher). Each push bumps ``version``.

Layout (under ``<data_dir>/teacher/<project_id>/<name>/``): ``registration.json`` and, for a pushed
``ema`` model, ``weights.safetensors``. Writes go to a temporary file and are renamed into place, and a
file lock orders concurrent writers, so every replica that shares the data directory reads a whole
registration and reloads a model whose ``revision`` changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from services.common.errors import InvalidInput, NotFound
from services.common.settings import get_settings

Kind = Literal["local", "ema"]
DType = Literal["float32", "bfloat16", "float16"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
REGISTRATION = "registration.json"
WEIGHTS = "weights.safetensors"


@dataclass(frozen=True)
class TeacherRecord:
    """One registered teacher model (what ``registration.json`` holds)."""

    project_id: str
    name: str
    kind: Kind
    path: str  # relative to teacher_models_dir
    dtype: DType
    generation: str  # new for every (re-)registration: a replaced model is never served from cache
    version: int  # pushes of weights so far (0: the folder's own weights)
    created_at: str
    updated_at: str
    last_tau: float | None = None

    @property
    def revision(self) -> str:
        return f"{self.generation}:{self.version}"


def models_root() -> Path:
    """``teacher_models_dir``, or ``<data_dir>/teacher-models`` when unset."""
    settings = get_settings()
    return Path(settings.teacher_models_dir) if settings.teacher_models_dir else settings.data_dir / "teacher-models"


def resolve_model_path(relative: str, field: str = "path") -> Path:
    """The model folder ``relative`` names inside ``teacher_models_dir``; 422 naming ``field`` otherwise."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise InvalidInput(f"{field}: must be a relative path inside teacher_models_dir", field=field)
    root = models_root().resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise InvalidInput(f"{field}: {relative!r} leaves teacher_models_dir", field=field)
    if not target.is_dir():
        raise InvalidInput(f"{field}: {relative!r} is not a folder in teacher_models_dir", field=field)
    if not (target / "config.json").is_file():
        raise InvalidInput(f"{field}: {relative!r} has no config.json (not a Hugging Face model folder)", field=field)
    return target


def _project_dir(project_id: str) -> Path:
    return get_settings().data_dir / "teacher" / project_id


def model_dir(project_id: str, name: str) -> Path:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(f"name: {name!r} must match {NAME_PATTERN}", field="name")
    return _project_dir(project_id) / name


def weights_path(record: TeacherRecord) -> Path:
    return model_dir(record.project_id, record.name) / WEIGHTS


def _now() -> str:
    return datetime.now(UTC).isoformat()


@contextlib.contextmanager
def locked(project_id: str, name: str) -> Iterator[None]:
    """An exclusive file lock on one model's folder (orders writers across processes on one volume)."""
    folder = model_dir(project_id, name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read(project_id: str, name: str, field: str = "model") -> TeacherRecord:
    """The registration; 404 naming ``field`` when there is none in this project."""
    path = model_dir(project_id, name) / REGISTRATION
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{field}: no teacher model {name!r} in this project", field=field) from None
    return TeacherRecord(**data)


def register(project_id: str, name: str, kind: Kind, path: str, dtype: DType) -> tuple[TeacherRecord, bool]:
    """Register (or re-register) ``name``; returns the record and whether anything changed.

    The same kind, path and dtype again is a no-op (PUT is idempotent); anything else replaces the
    registration and drops pushed weights.
    """
    resolve_model_path(path)
    with locked(project_id, name):
        folder = model_dir(project_id, name)
        try:
            current: TeacherRecord | None = read(project_id, name)
        except NotFound:
            current = None
        if current is not None and (current.kind, current.path, current.dtype) == (kind, path, dtype):
            return current, False
        now = _now()
        record = TeacherRecord(project_id=project_id, name=name, kind=kind, path=path, dtype=dtype,
                               generation=uuid.uuid4().hex[:12], version=0,
                               created_at=current.created_at if current else now, updated_at=now)
        (folder / WEIGHTS).unlink(missing_ok=True)
        _write_json(folder / REGISTRATION, asdict(record))
        return record, True


def bump_version(record: TeacherRecord, tau: float | None) -> TeacherRecord:
    """The registration after one push of weights (the caller holds :func:`locked`)."""
    updated = TeacherRecord(**{**asdict(record), "version": record.version + 1, "updated_at": _now(),
                               "last_tau": tau})
    _write_json(model_dir(record.project_id, record.name) / REGISTRATION, asdict(updated))
    return updated


def delete(project_id: str, name: str) -> None:
    read(project_id, name, field="name")
    shutil.rmtree(model_dir(project_id, name), ignore_errors=True)


def list_records(project_ids: set[str] | None) -> list[TeacherRecord]:
    """Every registration of ``project_ids`` (None: all projects), ordered by (project, name)."""
    root = get_settings().data_dir / "teacher"
    if not root.is_dir():
        return []
    out: list[TeacherRecord] = []
    for project in sorted(p for p in root.iterdir() if p.is_dir()):
        if project_ids is not None and project.name not in project_ids:
            continue
        for folder in sorted(f for f in project.iterdir() if f.is_dir()):
            if (folder / REGISTRATION).is_file():
                out.append(TeacherRecord(**json.loads((folder / REGISTRATION).read_text())))
    return out

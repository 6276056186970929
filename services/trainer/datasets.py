"""Prompt datasets uploaded to a project: stored in the project's own area, listed, found by name.

A run started through the service can only read datasets of its project (see
:mod:`services.trainer.confine`), so uploading is how a dataset gets there. An upload is checked
row by row (veRL schema) before it is kept, and uploading the same bytes under the same name again
answers with the dataset already stored, so a retried upload never duplicates or overwrites one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.errors import Conflict, InvalidInput
from services.common.pagination import keyset_page
from services.trainer.confine import datasets_dir
from services.trainer.models import TrainingDataset
from trainer.data import DatasetError, load_rows

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PARQUET_MAGIC = b"PAR1"
FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}


@dataclass(frozen=True)
class Upload:
    """What a client sent: the dataset's name, its bytes, and (optionally) the format it declared."""

    name: str
    content: bytes
    declared_format: str | None = None


def sniff_format(content: bytes, declared: str | None) -> str:
    """Parquet files start and end with ``PAR1``; everything else is read as JSONL."""
    found = "parquet" if content[:4] == PARQUET_MAGIC and content[-4:] == PARQUET_MAGIC else "jsonl"
    if declared is not None and declared != found:
        raise InvalidInput(f"format: the body is {found}, not {declared}", field="format")
    return found


def normalise_name(name: str) -> str:
    """``digits``, ``digits.jsonl`` and ``digits.parquet`` all name the dataset ``digits``."""
    for suffix in FORMATS.values():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _check_rows(path: Path) -> int:
    try:
        return len(load_rows(path))
    except DatasetError as exc:
        raise InvalidInput(f"body: {str(exc).replace(str(path), 'the upload')}", field="body") from None
    except (UnicodeDecodeError, OSError, ValueError) as exc:
        raise InvalidInput(f"body: not a readable dataset: {type(exc).__name__}", field="body") from None


def store(session: Session, project_id: str, upload: Upload) -> tuple[TrainingDataset, bool]:
    """Validate and keep an upload; return the dataset and whether it is new (False: an identical retry)."""
    if not upload.content:
        raise InvalidInput("body: the dataset is empty", field="body")
    name = normalise_name(upload.name)
    fmt = sniff_format(upload.content, upload.declared_format)
    digest = hashlib.sha256(upload.content).hexdigest()
    existing = find(session, project_id, name)
    if existing is not None:
        return _same_or_conflict(existing, digest), False
    folder = datasets_dir(project_id)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=FORMATS[fmt])
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(upload.content)
        rows = _check_rows(temp)
        dataset = TrainingDataset(project_id=project_id, name=name, format=fmt, filename=name + FORMATS[fmt],
                                  size_bytes=len(upload.content), rows=rows, sha256=digest)
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:  # a concurrent upload of the same name won (this request wrote nothing else)
            session.rollback()
            raced = find(session, project_id, name)
            if raced is None:
                raise
            return _same_or_conflict(raced, digest), False
        os.replace(temp, folder / dataset.filename)
    finally:
        temp.unlink(missing_ok=True)
    return dataset, True


def _same_or_conflict(existing: TrainingDataset, digest: str) -> TrainingDataset:
    if existing.sha256 != digest:
        raise Conflict(f"name: project already has a different dataset named {existing.name!r}; "
                       f"upload under another name", field="name")
    return existing


def find(session: Session, project_id: str, name: str) -> TrainingDataset | None:
    return session.scalar(select(TrainingDataset).where(TrainingDataset.project_id == project_id,
                                                        TrainingDataset.name == normalise_name(name)))


def registered_files(session: Session, project_id: str, name: str) -> dict[str, str]:
    """``{name: file name}`` when ``name`` is one of the project's datasets (what a run config may name)."""
    dataset = find(session, project_id, name)
    return {name: dataset.filename} if dataset is not None else {}


def list_page(session: Session, project_id: str, cursor: str | None,
              limit: int) -> tuple[list[TrainingDataset], str | None]:
    """One page of the project's datasets by name (unique in a project), and the cursor of the next page."""
    query = select(TrainingDataset).where(TrainingDataset.project_id == project_id)
    return keyset_page(session, query, (TrainingDataset.name,), cursor, limit)

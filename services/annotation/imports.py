"""Import of tasks into an annotation project from JSONL, CSV, Parquet or a `datasets` folder on disk.

A file is read into rows (:func:`read_rows`), each row is mapped through the column mapping
(:class:`~services.annotation.schemas.ImportMapping`) and checked on its own (:func:`check_row`), and
the good rows go in the way a trainer's step does: ``ingestion.store_step`` (prompts, rollout
groups, pseudo-labels), then one purchase each (ledger policy ``import``) and a queue task
(``purchases.record_purchase`` / ``purchases.fulfil``), under the project lock.

Choices the issue left open:

* Modes: ``all_or_nothing`` (default) stores nothing when any row is bad and answers 422 with every
  row's status; ``partial`` stores the good rows and reports the bad ones (200).
* A row's ``candidates`` (a list; in CSV a JSON array) must have the project's ``rollouts_per_prompt``
  entries. Without a candidates column the task has that many empty rollouts (a prompt-only task).
  ``answers`` (the rollouts' extracted final answers, for math projects) defaults to the candidates.
* Without an ``id`` column a prompt's id is ``sha256(prompt text)[:32]``, so a re-upload names the
  same prompts; a prompt already imported or bought in the project is that row's ``invalid_input``.
* The ``gold`` column goes into the hidden answer key (never shown to annotators).
* ``metadata`` columns are kept per prompt (``annotation_prompts.meta``) and exported back.
* Each import is a step of its own: ``step`` (default: the project's last step + 1, or 0).
* Imports spend the label budget like any purchase; more good rows than budget left is a 409.
* `datasets` folders are read with pyarrow (no `datasets` needed on the server): a
  ``save_to_disk`` folder (``state.json`` + ``.arrow`` files; a ``DatasetDict`` needs ``split``) or a
  folder of ``.parquet`` files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation import answer_key
from services.annotation.ingestion import prompts_by_external_id, store_step
from services.annotation.locking import lock_project
from services.annotation.models import AnnotationProject, AnswerSource, Purchase
from services.annotation.projects import budget_of
from services.annotation.purchases import fulfil, record_purchase
from services.annotation.schemas import ImportMapping, ImportOut, ImportRowStatus, RolloutGroupIn, StepIn
from services.common.errors import Conflict, InvalidInput

Format = Literal["jsonl", "csv", "parquet", "datasets"]
FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "datasets")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
IMPORT_POLICY = "import"


# ------------------------------------------------------------------------------------------ reading


def format_of(filename: str | None, given: str | None) -> str:
    """The file's format: the one given, else from the file name's suffix."""
    if given is not None:
        return given
    suffix = Path(filename or "").suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise InvalidInput(f"format: cannot tell the format of {filename!r}; send format=jsonl, csv or parquet",
                       field="format")


@dataclass
class RawRow:
    """One row as read: its values by column, or why it could not be read."""

    values: dict[str, Any] | None
    error: str | None = None


def read_rows(data: bytes, fmt: str) -> list[RawRow]:
    """The file's rows (JSONL: one object a line, blank lines skipped; CSV: a header row, UTF-8)."""
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append(RawRow(None, f"line {number} is not JSON: {exc.msg}"))
                continue
            rows.append(RawRow(value) if isinstance(value, dict) else RawRow(None, f"line {number} is not an object"))
        return rows
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), strict=True)
        try:
            return [RawRow(dict(row)) for row in reader]
        except csv.Error as exc:  # strict: a stray quote, an unterminated quoted field…
            raise ValueError(f"CSV: {exc}") from None
    if fmt == "parquet":
        return [RawRow(row) for row in pq.read_table(pa.BufferReader(data)).to_pylist()]
    raise InvalidInput(f"format: {fmt!r} cannot be uploaded; use jsonl, csv or parquet (a datasets folder is "
                       "read from the server's data dir with source_path)", field="format")


def _arrow_files(folder: Path, split: str | None) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if split is None:
            if len(splits) != 1:
                raise InvalidInput(f"split: the dataset has splits {splits}; name one", field="split")
            split = str(splits[0])
        if split not in splits:
            raise InvalidInput(f"split: {split!r} is not one of {splits}", field="split")
        folder = folder / split
    state = folder / "state.json"
    if state.is_file():
        names = [str(entry["filename"]) for entry in json.loads(state.read_text()).get("_data_files", [])]
        return [folder / name for name in names]
    return sorted(folder.glob("*.parquet")) or sorted(folder.glob("*.arrow"))


def read_folder(folder: Path, split: str | None, max_bytes: int) -> list[RawRow]:
    """A `datasets` ``save_to_disk`` folder (Arrow stream files) or a folder of Parquet files."""
    files = _arrow_files(folder, split)
    if not files:
        raise InvalidInput("source_path: no state.json, .arrow or .parquet files in that folder", field="source_path")
    if sum(f.stat().st_size for f in files) > max_bytes:
        raise InvalidInput(f"source_path: the dataset is over {max_bytes} bytes", field="source_path")
    tables = []
    for file in files:
        if file.suffix == ".parquet":
            tables.append(pq.read_table(file))
        else:
            with pa.memory_map(str(file)) as source:
                try:
                    tables.append(ipc.open_stream(source).read_all())
                except pa.ArrowInvalid:
                    tables.append(ipc.open_file(source).read_all())
    return [RawRow(row) for table in tables for row in table.to_pylist()]


# ------------------------------------------------------------------------------------------ checking


@dataclass
class CheckedRow:
    external_id: str
    group: RolloutGroupIn
    gold: str | None
    meta: dict[str, Any] | None


def _list_cell(value: Any, column: str) -> list[Any]:
    if isinstance(value, str):  # CSV cells carry lists as JSON arrays
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{column}: not a JSON array") from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{column}: expected a list, got {type(value).__name__}")
    return list(value)


def _text_cell(value: Any, column: str, *, required: bool) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value):
        if required:
            raise ValueError(f"{column}: missing")
        return None
    if isinstance(value, bool | int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{column}: expected text, got {type(value).__name__}")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN or infinite number")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _column_of(group_field: str, mapping: ImportMapping) -> str:
    """The file's column behind a field of ``RolloutGroupIn``."""
    if group_field == "prompt_id":
        return mapping.id or mapping.prompt
    if group_field == "answers":
        return mapping.answers or mapping.candidates or mapping.prompt
    if group_field == "completions":
        return mapping.candidates or mapping.prompt
    return mapping.prompt


def check_row(values: dict[str, Any], mapping: ImportMapping, n: int) -> tuple[CheckedRow | None, str | None,
                                                                                 str | None]:
    """One row mapped and checked: (the row, None, None) or (None, the field, the problem).

    The field is the mapped column's name as the file spells it."""
    column = mapping.prompt
    try:
        prompt = _text_cell(values.get(mapping.prompt), mapping.prompt, required=True)
        assert prompt is not None
        column = mapping.id or mapping.prompt
        external_id = (_text_cell(values.get(mapping.id), mapping.id, required=True) if mapping.id
                       else hashlib.sha256(prompt.encode()).hexdigest()[:32])
        assert external_id is not None
        completions: list[str] | None = None
        if mapping.candidates:
            column = mapping.candidates
            completions = [_text_cell(c, mapping.candidates, required=True) or ""
                           for c in _list_cell(values.get(mapping.candidates), mapping.candidates)]
            if len(completions) != n:
                raise ValueError(f"{mapping.candidates}: has {len(completions)} entries, but this project's tasks "
                                 f"have rollouts_per_prompt = {n}")
        answers: list[str | None]
        if mapping.answers:
            column = mapping.answers
            answers = [_text_cell(a, mapping.answers, required=False)
                       for a in _list_cell(values.get(mapping.answers), mapping.answers)]
            if len(answers) != n:
                raise ValueError(f"{mapping.answers}: has {len(answers)} entries, but rollouts_per_prompt = {n}")
        else:
            answers = list(completions) if completions is not None else [None] * n
        gold = None
        if mapping.gold:
            column = mapping.gold
            gold = _text_cell(values.get(mapping.gold), mapping.gold, required=False)
        meta = None
        if mapping.metadata:
            meta = {}
            for name in mapping.metadata:
                column = name
                if name not in values:
                    raise ValueError(f"{name}: no such column")
                try:
                    meta[name] = _jsonable(values[name])
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        group = RolloutGroupIn(prompt_id=external_id, prompt_text=prompt, answers=answers, completions=completions)
    except ValidationError as exc:  # the stored limits of a rollout group (text sizes, NUL characters)
        error = exc.errors()[0]
        column = _column_of(str(error["loc"][0]) if error["loc"] else "", mapping)
        return None, column, f"{column}: {error['msg']}"[:500]
    except ValueError as exc:
        return None, column, str(exc).splitlines()[0][:500]
    return CheckedRow(external_id=external_id, group=group, gold=gold, meta=meta), None, None


# ------------------------------------------------------------------------------------------ storing


def _next_step(project: AnnotationProject) -> int:
    return 0 if project.last_step is None else project.last_step + 1


def import_rows(session: Session, annotation_project_id: str, raw: list[RawRow], mapping: ImportMapping, *,
                mode: str, step: int | None, max_rows: int, now: datetime) -> ImportOut:
    """Check every row, then store the good ones (all of them, or none in ``all_or_nothing`` mode)."""
    project = lock_project(session, annotation_project_id)
    if project.answer_source is AnswerSource.answer_key:
        raise InvalidInput("this project is answered by its answer key; imported tasks go to people's queues",
                           field="annotation_project_id")
    if not raw:
        raise InvalidInput("file: no rows", field="file")
    if len(raw) > max_rows:
        raise InvalidInput(f"file: {len(raw)} rows, over the limit of {max_rows} per import", field="file")
    statuses: list[ImportRowStatus] = []
    good: list[CheckedRow] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(raw):
        if row.values is None:
            statuses.append(ImportRowStatus(row=index, status="invalid_input", field="row", message=row.error))
            continue
        checked, field, message = check_row(row.values, mapping, project.rollouts_per_prompt)
        if checked is not None and checked.external_id in seen:
            twice = checked.external_id
            checked, field, message = None, mapping.id or mapping.prompt, (
                f"id {twice!r} appears twice (also in row {seen[twice]})")
        if checked is None:
            statuses.append(ImportRowStatus(row=index, status="invalid_input", field=field, message=message))
            continue
        seen[checked.external_id] = index
        statuses.append(ImportRowStatus(row=index, status="ok", prompt_id=checked.external_id))
        good.append(checked)
    known = prompts_by_external_id(session, project.id, [r.external_id for r in good])
    bought = set(session.scalars(select(Purchase.prompt_id).where(
        Purchase.annotation_project_id == project.id,
        Purchase.prompt_id.in_([p.id for p in known.values()])))) if known else set()
    by_id = {s.prompt_id: s for s in statuses if s.prompt_id is not None}
    kept: list[CheckedRow] = []
    for checked_row in good:
        prompt = known.get(checked_row.external_id)
        problem = None
        if prompt is not None and prompt.id in bought:
            problem = f"prompt {checked_row.external_id!r} is already a task of this project"
        elif prompt is not None and prompt.text != checked_row.group.prompt_text:
            problem = f"prompt {checked_row.external_id!r} is registered with a different text"
        if problem is None:
            kept.append(checked_row)
            continue
        status = by_id[checked_row.external_id]
        status.status, status.field, status.message = "invalid_input", mapping.id or mapping.prompt, problem
    bad = [s for s in statuses if s.status != "ok"]
    if bad and mode == "all_or_nothing":
        return ImportOut(imported=0, rejected=len(bad), step=None, rows=statuses, budget=budget_of(project))
    left = budget_of(project).left
    if len(kept) > left:
        raise Conflict(f"{len(kept)} rows to import but only {left} of the label budget of {project.label_budget} "
                       "are left", field="file", code="budget_exceeded")
    if not kept:
        return ImportOut(imported=0, rejected=len(bad), step=None, rows=statuses, budget=budget_of(project))
    at = step if step is not None else _next_step(project)
    stored = store_step(session, project, StepIn(step=at, groups=[r.group for r in kept]), now)
    for stored_row, prompt in zip(kept, stored.prompts, strict=True):
        if stored_row.meta is not None:
            prompt.meta = stored_row.meta
    gold = [(r.external_id, r.gold) for r in kept if r.gold is not None]
    if gold:
        answer_key.upload(session, project.id, gold)
    purchases = [record_purchase(session, project, group, prompt, policy=IMPORT_POLICY, score=None, now=now)
                 for group, prompt in zip(stored.groups, stored.prompts, strict=True)]
    session.flush()
    for purchase in purchases:
        fulfil(session, project, purchase, priority=None, key_answer=None, now=now)
    session.flush()
    return ImportOut(imported=len(kept), rejected=len(bad), step=at, rows=statuses, budget=budget_of(project))


def first_problem(rows: Iterable[ImportRowStatus]) -> ImportRowStatus | None:
    return next((r for r in rows if r.status != "ok"), None)

"""Exports of labels and adjudications: JSONL, CSV, Parquet (which `datasets` loads), and veRL's parquet.

Two kinds of record, read page by page (``EXPORT_BATCH`` rows a query, keyset order, never the whole
table):

* ``final``: one record per labelled task (its final label: unanimous, or the adjudication), in
  label-feed order: ``task_id, purchase_id, prompt_id, prompt, status, label_kind, label, values,
  labelled_by, adjudicator, labelled_at, metadata``;
* ``raw``: every annotation (undone ones left out), oldest first, then every adjudication:
  ``source`` (``annotation`` | ``adjudication``), ``id, task_id, prompt_id, prompt, annotator`` (username),
  ``kind, answer, values, created_at, metadata``.

JSONL keeps ``values`` nested as submitted. CSV and Parquet flatten it, one column per question
(:func:`flat_columns`): ``values.<id>`` for single_label, free_text (text) and rating (a number);
``values.<id>`` as a JSON array text for multi_label and ranking; ``values.<id>.choice`` /
``.rationale`` for a preference pair; ``values.<id>.kind`` / ``.answer`` / ``.candidate`` /
``.rationale`` for a math answer. Lists (``labelled_by``) and ``metadata`` are JSON text there too.
The `datasets` export is that Parquet file: ``datasets.Dataset.from_parquet`` (or
``load_dataset("parquet", data_files=…)``) reads it.

veRL (``verl`` format): one row per final label that is an answer (ambiguous ones left out), in
veRL's RLHF dataset schema: ``data_source`` (the project's name unless given), ``prompt`` as a chat list
``[{"role": "user", "content": prompt}]``, ``ability`` (default ``math``), ``reward_model``
``{"style": "rule", "ground_truth": str}`` (the math answer, or the named question's value as text)
and ``extra_info`` ``{"split", "index", "prompt_id", "task_id"}``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from services.annotation.label_schema import (
    LabelSchema,
    MathAnswerQuestion,
    PreferencePairQuestion,
    RatingQuestion,
)
from services.annotation.models import (
    Adjudication,
    Annotation,
    Annotator,
    LabelKind,
    Prompt,
    Purchase,
    PurchaseStatus,
    Task,
)
from services.common.errors import InvalidInput

EXPORT_BATCH = 500
FORMATS = ("jsonl", "csv", "parquet", "datasets", "verl")
Record = dict[str, Any]
Fetch = Callable[[Any], tuple[list[Record], Any]]

FINAL_BASE = ["task_id", "purchase_id", "prompt_id", "prompt", "status", "label_kind", "label", "labelled_by",
              "adjudicator", "labelled_at", "metadata"]
RAW_BASE = ["source", "id", "task_id", "prompt_id", "prompt", "annotator", "kind", "answer", "created_at",
            "metadata"]


# ----------------------------------------------------------------------------------------- reading


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(session.execute(select(Annotator.id, Annotator.username).where(Annotator.id.in_(ids))).all())


def final_batch(session: Session, annotation_project_id: str, tasks: Select[Any], after: int,
                limit: int = EXPORT_BATCH) -> tuple[list[Record], int | None]:
    """Final labels of the filtered tasks after feed position ``after``; the next position (None: done)."""
    task_ids = tasks.with_only_columns(Task.id)
    rows = session.execute(
        select(Purchase, Task.id, Task.status, Prompt)
        .join(Task, Task.purchase_id == Purchase.id).join(Prompt, Prompt.id == Purchase.prompt_id)
        .where(Purchase.annotation_project_id == annotation_project_id, Purchase.status == PurchaseStatus.labelled,
               Purchase.label_seq > after, Task.id.in_(task_ids))
        .order_by(Purchase.label_seq).limit(limit)).all()
    names = _names(session, {i for p, *_ in rows for i in p.labelled_by} | {
        p.adjudicator_id for p, *_ in rows if p.adjudicator_id})
    out = [{"task_id": task_id, "purchase_id": p.id, "prompt_id": prompt.external_id, "prompt": prompt.text,
            "status": "adjudicated" if p.adjudicator_id else "labelled",
            "label_kind": p.label_kind.value if p.label_kind else None, "label": p.label,
            "values": p.label_values, "labelled_by": [names.get(i, i) for i in p.labelled_by],
            "adjudicator": names.get(p.adjudicator_id) if p.adjudicator_id else None,
            "labelled_at": _iso(p.labelled_at), "metadata": prompt.meta}
           for p, task_id, _status, prompt in rows]
    return out, (int(rows[-1][0].label_seq or 0) if len(rows) == limit else None)


def raw_batch(session: Session, annotation_project_id: str, tasks: Select[Any], after: tuple[str, str],
              limit: int = EXPORT_BATCH) -> tuple[list[Record], tuple[str, str] | None]:
    """Annotations, then adjudications, of the filtered tasks after ``(phase, last id)``."""
    phase, last = after
    task_ids = tasks.with_only_columns(Task.id)
    out: list[Record] = []
    if phase == "annotation":
        rows = session.execute(
            select(Annotation, Prompt, Annotator.username)
            .join(Task, Task.id == Annotation.task_id).join(Prompt, Prompt.id == Task.prompt_id)
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .where(Annotation.annotation_project_id == annotation_project_id, Annotation.undone_at.is_(None),
                   Annotation.rejected_at.is_(None), Annotation.id > last, Annotation.task_id.in_(task_ids))
            .order_by(Annotation.id).limit(limit)).all()
        out = [{"source": "annotation", "id": a.id, "task_id": a.task_id, "prompt_id": prompt.external_id,
                "prompt": prompt.text, "annotator": name, "kind": a.kind.value, "answer": a.answer,
                "values": a.label_values, "created_at": _iso(a.created_at), "metadata": prompt.meta}
               for a, prompt, name in rows]
        return out, (("annotation", rows[-1][0].id) if len(rows) == limit else ("adjudication", ""))
    rows_adj = session.execute(
        select(Adjudication, Prompt, Annotator.username)
        .join(Task, Task.id == Adjudication.task_id).join(Prompt, Prompt.id == Task.prompt_id)
        .join(Annotator, Annotator.id == Adjudication.adjudicator_id)
        .where(Task.annotation_project_id == annotation_project_id, Adjudication.id > last,
               Adjudication.task_id.in_(task_ids))
        .order_by(Adjudication.id).limit(limit)).all()
    out = [{"source": "adjudication", "id": d.id, "task_id": d.task_id, "prompt_id": prompt.external_id,
            "prompt": prompt.text, "annotator": name, "kind": d.kind.value, "answer": d.answer,
            "values": d.label_values, "created_at": _iso(d.created_at), "metadata": prompt.meta}
           for d, prompt, name in rows_adj]
    return out, (("adjudication", rows_adj[-1][0].id) if len(rows_adj) == limit else None)


def records(fetch: Fetch, start: Any) -> Iterator[list[Record]]:
    """Batches of records: ``fetch(position) -> (records, next position or None)``."""
    position = start
    while position is not None:
        batch, position = fetch(position)
        if batch:
            yield batch


# ---------------------------------------------------------------------------------------- flattening


@dataclass(frozen=True)
class FlatColumn:
    name: str
    question_id: str
    sub: str | None  # a key inside a dict value
    kind: str  # "text", "number", "int", "json"


def flat_columns(schema: LabelSchema) -> list[FlatColumn]:
    """The ``values.*`` columns of the CSV and Parquet exports, question by question."""
    columns = []
    for q in schema.questions:
        base = f"values.{q.id}"
        if isinstance(q, MathAnswerQuestion):
            columns += [FlatColumn(f"{base}.kind", q.id, "kind", "text"),
                        FlatColumn(f"{base}.answer", q.id, "answer", "text"),
                        FlatColumn(f"{base}.candidate", q.id, "candidate", "int"),
                        FlatColumn(f"{base}.rationale", q.id, "rationale", "text")]
        elif isinstance(q, PreferencePairQuestion):
            columns += [FlatColumn(f"{base}.choice", q.id, "choice", "text"),
                        FlatColumn(f"{base}.rationale", q.id, "rationale", "text")]
        elif isinstance(q, RatingQuestion):
            columns.append(FlatColumn(base, q.id, None, "number"))
        elif q.type in ("multi_label", "ranking"):
            columns.append(FlatColumn(base, q.id, None, "json"))
        else:
            columns.append(FlatColumn(base, q.id, None, "text"))
    return columns


def flatten(record: Record, columns: list[FlatColumn], base: list[str]) -> Record:
    """A record as one flat row: lists and metadata as JSON text, ``values`` one column per question part."""
    row: Record = {}
    for name in base:
        value = record.get(name)
        row[name] = json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, list | dict) else value
    values = record.get("values") or {}
    for column in columns:
        value = values.get(column.question_id)
        if column.sub is not None:
            value = value.get(column.sub) if isinstance(value, dict) else None
        if column.kind == "json" and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        elif column.kind == "number" and value is not None:
            value = float(value)
        elif column.kind == "int" and value is not None:
            value = int(value)
        row[column.name] = value
    return row


def arrow_schema(columns: list[FlatColumn], base: list[str]) -> pa.Schema:
    types = {"text": pa.string(), "json": pa.string(), "number": pa.float64(), "int": pa.int64()}
    return pa.schema([pa.field(name, pa.string()) for name in base]
                     + [pa.field(c.name, types[c.kind]) for c in columns])


# ----------------------------------------------------------------------------------------- writing


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out after each write (streaming Parquet)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def stream_jsonl(batches: Iterator[list[Record]]) -> Iterator[bytes]:
    for batch in batches:
        yield "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch).encode()


# A cell a spreadsheet would run as a formula (OWASP's CSV injection list: = + - @, tab, carriage return).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """``value`` with a leading ``'`` when it is text a spreadsheet would evaluate (``=HYPERLINK(...)``);
    numbers and other values are unchanged. Only for CSVs meant for spreadsheets: it alters the text."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def stream_csv(batches: Iterator[list[Record]], columns: list[FlatColumn], base: list[str], *,
               spreadsheet: bool = False) -> Iterator[bytes]:
    header = base + [c.name for c in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for batch in batches:
        for record in batch:
            row = flatten(record, columns, base)
            writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()} if spreadsheet else row)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue().encode()


def stream_parquet(rows: Iterator[list[Record]], schema: pa.Schema) -> Iterator[bytes]:
    """One Parquet row group per batch, each sent as soon as it is written."""
    sink = _Sink()
    writer = pq.ParquetWriter(sink, schema)
    for batch in rows:
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        yield sink.take()
    writer.close()
    yield sink.take()


def stream_flat_parquet(batches: Iterator[list[Record]], columns: list[FlatColumn],
                        base: list[str]) -> Iterator[bytes]:
    flat = ([flatten(r, columns, base) for r in batch] for batch in batches)
    return stream_parquet(flat, arrow_schema(columns, base))


VERL_SCHEMA = pa.schema([
    pa.field("data_source", pa.string()),
    pa.field("prompt", pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))),
    pa.field("ability", pa.string()),
    pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
    pa.field("extra_info", pa.struct([pa.field("split", pa.string()), pa.field("index", pa.int64()),
                                      pa.field("prompt_id", pa.string()), pa.field("task_id", pa.string())])),
])


def verl_ground_truth(schema: LabelSchema, record: Record, question_id: str | None) -> str | None:
    """The ground truth of a final label: the math answer, or the named question's value as text."""
    if question_id is None:
        if schema.math is None:
            raise InvalidInput("question_id: this project has no math_answer question; name the question whose "
                               "value is the ground truth", field="question_id")
        return record["label"] if record.get("label_kind") == LabelKind.answer.value else None
    value = (record.get("values") or {}).get(question_id)
    if isinstance(value, dict):
        value = value.get("answer", value.get("choice"))
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def check_question(schema: LabelSchema, question_id: str | None) -> None:
    if question_id is not None and all(q.id != question_id for q in schema.questions):
        raise InvalidInput(f"question_id: {question_id!r} is not a question of this project", field="question_id")


def stream_verl(batches: Iterator[list[Record]], schema: LabelSchema, question_id: str | None, data_source: str,
                ability: str, split: str) -> Iterator[bytes]:
    counter = [0]

    def rows() -> Iterator[list[Record]]:
        for batch in batches:
            out = []
            for record in batch:
                truth = verl_ground_truth(schema, record, question_id)
                if truth is None:
                    continue
                out.append({"data_source": data_source, "prompt": [{"role": "user", "content": record["prompt"]}],
                            "ability": ability, "reward_model": {"style": "rule", "ground_truth": truth},
                            "extra_info": {"split": split, "index": counter[0], "prompt_id": record["prompt_id"],
                                           "task_id": record["task_id"]}})
                counter[0] += 1
            if out:
                yield out

    return stream_parquet(rows(), VERL_SCHEMA)

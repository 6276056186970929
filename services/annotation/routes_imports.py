"""Import routes: tasks from an uploaded JSONL/CSV/Parquet file, or (admins) a `datasets` folder on the server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.annotation import idempotency, imports, projects
from services.annotation.deps import Admin, IdempotencyKey, Now, ProjectPath, SessionDep, Trainer
from services.annotation.locking import lock_project
from services.annotation.schemas import ImportMapping, ImportOut
from services.common.db import utcnow
from services.common.errors import InvalidInput
from services.common.idempotency import REPLAYED_HEADER, fingerprint
from services.common.settings import get_settings

router = APIRouter(prefix="/v1/annotation", tags=["data"])
Mode = Literal["all_or_nothing", "partial"]
IMPORTS_DIR = "imports"


class PathImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_path: str = Field(min_length=1, max_length=1000, description=(
        "A file (.jsonl, .csv, .parquet) or a `datasets` folder (save_to_disk, or Parquet files), relative to "
        "<data_dir>/imports on the server."))
    split: str | None = Field(default=None, max_length=100, description="The split of a saved DatasetDict.")
    mapping: ImportMapping = Field(default_factory=ImportMapping)
    mode: Mode = "all_or_nothing"
    step: int | None = Field(default=None, ge=0, le=10_000_000)


def confined(value: str) -> Path:
    """``value`` inside ``<data_dir>/imports``; absolute paths, ``..`` and symlinks leading out are refused."""
    if "\x00" in value or "\\" in value:
        raise InvalidInput("source_path: NUL and backslash are not accepted", field="source_path")
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidInput("source_path: give a path relative to <data_dir>/imports, without '..'",
                           field="source_path")
    base = (get_settings().data_dir / IMPORTS_DIR).resolve()
    resolved = (base / pure).resolve()
    if not resolved.is_relative_to(base):
        raise InvalidInput(f"source_path: {value!r} leads out of <data_dir>/imports (a symlink?)", field="source_path")
    if not resolved.exists():
        raise InvalidInput(f"source_path: {value!r} does not exist under <data_dir>/imports", field="source_path")
    return resolved


def _answer(out: ImportOut) -> tuple[int, str]:
    bad = imports.first_problem(out.rows)
    body = json.loads(out.model_dump_json())
    if out.imported == 0 and bad is not None:
        where = f"rows[{bad.row}].{bad.field}"
        body["error"] = {"code": "invalid_input", "field": where,
                         "message": f"row {bad.row}: {bad.message} ({out.rejected} bad rows; nothing imported)"}
        return 422, json.dumps(body)
    return 200, json.dumps(body)


def _run(session: SessionDep, annotation_project_id: str, key: str | None, request_hash: str,
         read: Callable[[], list[imports.RawRow]], mapping: ImportMapping, mode: Mode, step: int | None,
         now: Now) -> JSONResponse:
    projects.get_project(session, annotation_project_id)
    if key is not None:
        lock_project(session, annotation_project_id)
        stored = idempotency.replay(session, annotation_project_id, "imports", key, request_hash)
        if stored is not None:
            status = 422 if "error" in json.loads(stored) else 200
            return JSONResponse(json.loads(stored), status_code=status, headers={REPLAYED_HEADER: "true"})
    settings = get_settings()
    out = imports.import_rows(session, annotation_project_id, read(), mapping, mode=mode, step=step,
                              max_rows=settings.annotation_import_max_rows, now=now or utcnow())
    status, body = _answer(out)
    if key is not None:
        idempotency.remember(session, annotation_project_id, "imports", key, request_hash, status, body)
    return JSONResponse(json.loads(body), status_code=status)


def _mapping(text: str) -> ImportMapping:
    try:
        return ImportMapping.model_validate_json(text or "{}")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise InvalidInput(f"mapping{'.' + where if where else ''}: {error['msg']}",
                           field=f"mapping.{where}" if where else "mapping") from None


@router.post("/projects/{annotation_project_id}/imports", response_model=ImportOut,
             responses={422: {"description": "A bad row (all_or_nothing): every row's status and `error`."}})
def import_file(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep, now: Now,
                      file: Annotated[UploadFile, File(description="A .jsonl, .csv or .parquet file.")],
                      mapping: Annotated[str, Form(max_length=20_000, description=(
                          "The column mapping as JSON: {prompt, id, candidates, answers, gold, metadata}."))] = "{}",
                      format: Annotated[Literal["jsonl", "csv", "parquet"] | None, Form(description=(
                          "Unset: from the file name (.jsonl, .csv, .parquet)."))] = None,
                      mode: Annotated[Mode, Form()] = "all_or_nothing",
                      step: Annotated[int | None, Form(ge=0, le=10_000_000)] = None,
                      idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Create a task per row of the file (see docs/annotation_data.md). `all_or_nothing` (default): a bad row
    stores nothing and answers 422 with every row's status; `partial`: the good rows are stored."""
    projects.accessible(session, principal, annotation_project_id)
    parsed = _mapping(mapping)
    fmt = imports.format_of(file.filename, format)
    limit = get_settings().annotation_import_max_bytes
    data = file.file.read(limit + 1)  # a sync route: it runs in the thread pool, as the DB work must
    if len(data) > limit:
        raise InvalidInput(f"file: over {limit} bytes (REWARDHUB_ANNOTATION_IMPORT_MAX_BYTES)", field="file")

    def read() -> list[imports.RawRow]:
        try:
            return imports.read_rows(data, fmt)
        except (UnicodeDecodeError, ValueError, OSError) as exc:  # pyarrow's errors are ValueError/OSError
            raise InvalidInput(f"file: not a readable {fmt} file ({str(exc).splitlines()[0][:200]})",
                               field="file") from None

    request_hash = fingerprint({"file": hashlib.sha256(data).hexdigest(), "format": fmt,
                                "mapping": parsed.model_dump(), "mode": mode, "step": step})
    return _run(session, annotation_project_id, idempotency_key, request_hash, read, parsed, mode, step, now)


@router.post("/projects/{annotation_project_id}/imports/from-path", response_model=ImportOut,
             responses={422: {"description": "A bad row (all_or_nothing): every row's status and `error`."}})
def import_path(annotation_project_id: ProjectPath, body: PathImportIn, principal: Admin, session: SessionDep,
                now: Now, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Admins: import a file or a `datasets` folder (`save_to_disk`, or Parquet files) from `<data_dir>/imports`."""
    projects.accessible(session, principal, annotation_project_id)
    path = confined(body.source_path)
    limit = get_settings().annotation_import_max_bytes

    def read() -> list[imports.RawRow]:
        try:
            if path.is_dir():
                return imports.read_folder(path, body.split, limit)
            if path.stat().st_size > limit:
                raise InvalidInput(f"source_path: over {limit} bytes", field="source_path")
            return imports.read_rows(path.read_bytes(), imports.format_of(path.name, None))
        except (UnicodeDecodeError, ValueError, OSError, KeyError) as exc:
            raise InvalidInput(f"source_path: not a readable dataset ({str(exc).splitlines()[0][:200]})",
                               field="source_path") from None

    request_hash = fingerprint(body.model_dump())
    return _run(session, annotation_project_id, idempotency_key, request_hash, read, body.mapping, body.mode,
                body.step, now)

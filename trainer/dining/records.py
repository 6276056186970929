"""DiningBench records: one JSON object per line, images as local files.

Layout (``id`` and ``prompt`` required; see docs/dining_bench.md)::

    {"id": "d1", "task": "classification" | "nutrition" | "vqa", "prompt": "...",
     "ground_truth": "B" | {"calories": 520, "protein": 21, "carbohydrates": 60, "fat": 18} | "...",
     "standard_image": "images/d1.jpg", "user_images": ["images/d1_u1.jpg", ...],
     "images": [...],        # optional: a fixed image list (the authors' VQA files), used whole
     "question": "..."}      # optional: the question shown to the VQA judge (default: the prompt)

Image paths are relative to the JSONL file's folder (or absolute). Images are chosen by index:
0 = the standard image, 1.. = the user images in order (default ``(0,)``, as the authors' scripts);
an index beyond a record's images is skipped, a record left with no image is a load error.
``task`` may be omitted when the caller names one for the whole file.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("classification", "nutrition", "vqa")


class RecordError(ValueError):
    """A record the harness cannot use: the message names the line and the field."""


@dataclass(frozen=True)
class DiningRecord:
    id: str
    task: str
    prompt: str
    ground_truth: Any
    images: tuple[Path, ...]
    question: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def judge_question(self) -> str:
        return self.question if self.question is not None else self.prompt


def _paths(value: Any, where: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise RecordError(f"{where}: expected a path or a list of paths")


def select_images(row: dict[str, Any], indices: Sequence[int], where: str) -> list[str]:
    """The record's image paths: ``images`` whole when given, else ``[standard, *user][i]`` for each index."""
    if "images" in row and row["images"] not in (None, []):
        return _paths(row["images"], f"{where}: images")
    pool = _paths(row.get("standard_image"), f"{where}: standard_image")
    pool += _paths(row.get("user_images"), f"{where}: user_images")
    return [pool[i] for i in indices if 0 <= i < len(pool)]


def parse_record(row: Any, where: str, *, base_dir: Path, task: str | None = None,
                 image_indices: Sequence[int] = (0,)) -> DiningRecord:
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object")
    rid = row.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or str(rid) == "":
        raise RecordError(f"{where}: id: required (a string or an integer)")
    kind = row.get("task", task)
    if kind not in TASKS:
        raise RecordError(f"{where}: task: expected one of {', '.join(TASKS)} (in the record or --task), got {kind!r}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecordError(f"{where}: prompt: required (a non-empty string)")
    if "ground_truth" not in row:
        raise RecordError(f"{where}: ground_truth: required")
    question = row.get("question")
    if question is not None and not isinstance(question, str):
        raise RecordError(f"{where}: question: expected a string")
    images = []
    for path in select_images(row, image_indices, where):
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        if not resolved.is_file():
            raise RecordError(f"{where}: image {path!r} does not exist (looked for {resolved})")
        images.append(resolved)
    if not images:
        raise RecordError(f"{where}: no image selected (standard_image/user_images/images and the image indices)")
    return DiningRecord(id=str(rid), task=str(kind), prompt=prompt, ground_truth=row["ground_truth"],
                        images=tuple(images), question=question, raw=row)


def load_records(path: Path, *, task: str | None = None, image_indices: Sequence[int] = (0,)) -> list[DiningRecord]:
    """Every record of a JSONL file, checked before any model call; ids must be unique."""
    if task is not None and task not in TASKS:
        raise RecordError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    records: list[DiningRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where}: not valid JSON: {exc.msg}") from None
        record = parse_record(row, where, base_dir=path.parent, task=task, image_indices=image_indices)
        if record.id in seen:
            raise RecordError(f"{where}: id: duplicate id {record.id!r}")
        seen.add(record.id)
        records.append(record)
    if not records:
        raise RecordError(f"{path.name}: holds no records")
    return records


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


def image_mime(path: Path, data: bytes) -> str:
    """The image's MIME type from its first bytes, else from its suffix, else ``image/jpeg``."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed and guessed.startswith("image/") else "image/jpeg"


def data_url(path: Path) -> str:
    data = path.read_bytes()
    return f"data:{image_mime(path, data)};base64,{base64.b64encode(data).decode('ascii')}"


def build_messages(record: DiningRecord) -> list[dict[str, Any]]:
    """One user message: the images as base64 ``image_url`` data-URL parts, then the prompt text."""
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(p)}} for p in record.images]
    parts.append({"type": "text", "text": record.prompt})
    return [{"role": "user", "content": parts}]

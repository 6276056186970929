"""The resumable DiningBench run: every record asks the VLM once, results appended as they finish.

- Each finished record is one JSON line appended to the results file (written whole, flushed and
  fsync'ed), so a crash loses at most the records in flight (at most ``concurrency`` of them); a torn
  last line is ignored on the next read.
- A rerun reads the file first and skips every record id that has an ``ok`` line; records whose line
  says ``error`` or ``timeout`` are asked again and get a new line (the report reads the ``ok`` one).
- At most ``concurrency`` records are in flight. Request-rate limits, per-attempt timeouts and retries
  with backoff belong to the backend (``services.common.llm.OpenAIChatClient``: a token bucket at
  ``rpm / 60`` requests per second and tenacity retries of 429, 5xx, timeouts and dropped connections).
- A VQA record is judged in the same task (when a judge backend is given), so its line holds both.

The backend is anything with ``async chat(messages, **opts)`` returning an object with ``.text``;
failures it raises become the record's ``status`` (``timeout`` when the error's ``kind`` says so).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from trainer.dining.metrics import clean_prediction, judge_messages
from trainer.dining.records import DiningRecord, build_messages


class ChatBackend(Protocol):
    async def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Any: ...


@dataclass(frozen=True)
class RunSummary:
    total: int
    skipped: int
    ok: int
    failed: int


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """id → its result line: the ``ok`` one when there is one, else the last. Lines that do not parse
    (a write torn by a crash) are skipped."""
    results: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return results
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or "id" not in row:
            continue
        rid = str(row["id"])
        if results.get(rid, {}).get("status") != "ok":
            results[rid] = row
    return results


def finished_ids(path: Path) -> set[str]:
    return {rid for rid, row in read_results(path).items() if row.get("status") == "ok"}


class _Appender:
    """Appends one JSON line per call, flushed and fsync'ed; starts on a fresh line after a torn write."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                torn = existing.read(1) != b"\n"
        self._file = path.open("a", encoding="utf-8")
        if torn:
            self._file.write("\n")

    def write(self, row: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _failure_status(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) or getattr(exc, "kind", None) == "timeout" else "error"


async def answer_record(record: DiningRecord, backend: ChatBackend, *, judge: ChatBackend | None = None,
                        model_opts: Mapping[str, Any] | None = None,
                        judge_opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One record's result line (never raises for a failed call: the line says ``error``/``timeout``)."""
    line: dict[str, Any] = {"id": record.id, "task": record.task, "status": "ok",
                            "images": [str(p) for p in record.images]}
    started = time.monotonic()
    stage = "model"
    try:
        result = await backend.chat(build_messages(record), **dict(model_opts or {}))
        line["prediction"] = result.text
        line["attempts"] = getattr(result, "attempts", 1)
        line["usage"] = getattr(result, "usage", {})
        answer = clean_prediction(result.text)
        if record.task == "vqa" and judge is not None and answer and str(record.ground_truth or "").strip():
            stage = "judge"
            verdict = await judge.chat(judge_messages(record.judge_question, str(record.ground_truth), answer),
                                       **dict(judge_opts or {}))
            line["judge_reply"] = verdict.text
    except Exception as exc:  # every failure of a call becomes this record's status, never the run's
        line.update(status=_failure_status(exc), stage=stage, error=f"{type(exc).__name__}: {exc}"[:1000])
    line["latency_s"] = round(time.monotonic() - started, 3)
    line["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return line


async def run_bench(records: Sequence[DiningRecord], backend: ChatBackend, results_path: Path, *,
                    concurrency: int = 8, judge: ChatBackend | None = None,
                    model_opts: Mapping[str, Any] | None = None, judge_opts: Mapping[str, Any] | None = None,
                    on_result: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Answer every record without an ``ok`` line in ``results_path``; see the module docstring."""
    if concurrency < 1:
        raise ValueError(f"concurrency: must be at least 1, got {concurrency}")
    done = finished_ids(results_path)
    pending = [r for r in records if r.id not in done]
    counts = {"ok": 0, "failed": 0}
    appender = _Appender(results_path)
    queue = iter(pending)

    async def worker() -> None:
        for record in queue:  # one shared iterator: each record goes to exactly one worker
            line = await answer_record(record, backend, judge=judge, model_opts=model_opts, judge_opts=judge_opts)
            appender.write(line)
            counts["ok" if line["status"] == "ok" else "failed"] += 1
            if on_result is not None:
                on_result(line)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(pending))):
                group.create_task(worker())
    finally:
        appender.close()
    return RunSummary(total=len(records), skipped=len(records) - len(pending), ok=counts["ok"],
                      failed=counts["failed"])

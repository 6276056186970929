"""The DiningBench report: the task metrics from the records and the results file.

Metrics are recomputed from the raw predictions each time (a change of the cleaning or parsing rules
needs no rerun). A record whose call failed counts as wrong (unreadable / all nutrients missing /
ROUGE 0 and judged "no"), as the authors' scripts count ``__INFER_ERROR__``; a record with no line
yet (a run not finished) is left out and counted in ``counts.missing``, and ``complete`` is false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainer.dining.metrics import classification_metrics, clean_prediction, nutrition_metrics, vqa_metrics
from trainer.dining.records import TASKS, DiningRecord


def build_report(records: Sequence[DiningRecord], results: Mapping[str, Mapping[str, Any]], *,
                 per_value: bool = False, judge: bool = False) -> dict[str, Any]:
    counts = {"records": len(records), "ok": 0, "error": 0, "timeout": 0, "missing": 0}
    by_task: dict[str, list[tuple[DiningRecord, Mapping[str, Any]]]] = {t: [] for t in TASKS}
    for record in records:
        line = results.get(record.id)
        if line is None:
            counts["missing"] += 1
            continue
        status = str(line.get("status"))
        counts[status if status in counts else "error"] += 1
        by_task[record.task].append((record, line))

    def answer(line: Mapping[str, Any]) -> str | None:
        text = line.get("prediction")
        return clean_prediction(text) if line.get("status") == "ok" and isinstance(text, str) else None

    tasks: dict[str, Any] = {}
    if by_task["classification"]:
        tasks["classification"] = classification_metrics(
            (str(r.ground_truth), answer(line)) for r, line in by_task["classification"])
    if by_task["nutrition"]:
        tasks["nutrition"] = nutrition_metrics(((r.ground_truth, answer(line)) for r, line in by_task["nutrition"]),
                                               per_value=per_value)
    if by_task["vqa"]:
        tasks["vqa"] = vqa_metrics(((r.ground_truth, answer(line), line.get("judge_reply"))
                                    for r, line in by_task["vqa"]), judge=judge)
    return {"counts": counts, "complete": counts["missing"] == 0 and counts["error"] + counts["timeout"] == 0,
            "nutrition_rule": "per_value" if per_value else "authors", "tasks": tasks}

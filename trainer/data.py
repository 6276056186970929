"""Prompt datasets in the veRL schema (JSONL or Parquet).

Each row: ``prompt`` (chat messages or text), ``reward_model.ground_truth``, ``data_source``,
optionally ``extra_info``. Rows are validated up front so a bad file fails before training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PromptRow:
    index: int
    prompt: str | list[dict[str, Any]]
    ground_truth: Any
    data_source: str = ""
    extra_info: dict[str, Any] = field(default_factory=dict)


class DatasetError(ValueError):
    """A dataset row that does not fit the veRL schema; names the row and the field."""


def _row(index: int, raw: Any, source: str) -> PromptRow:
    if not isinstance(raw, dict):
        raise DatasetError(f"{source} row {index}: expected an object, got {type(raw).__name__}")
    prompt = raw.get("prompt")
    if isinstance(prompt, list):
        for j, message in enumerate(prompt):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DatasetError(f"{source} row {index}: prompt[{j}] must be a {{role, content}} message")
    elif not isinstance(prompt, str) or not prompt:
        raise DatasetError(f"{source} row {index}: field 'prompt' must be chat messages or non-empty text")
    reward_model = raw.get("reward_model")
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise DatasetError(f"{source} row {index}: field 'reward_model.ground_truth' is required")
    extra = raw.get("extra_info") or {}
    return PromptRow(index=index, prompt=prompt, ground_truth=reward_model["ground_truth"],
                     data_source=str(raw.get("data_source", "")), extra_info=dict(extra))


def load_rows(path: str | Path) -> list[PromptRow]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        records = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path} line {line_no}: invalid JSON: {exc.msg}") from exc
    else:
        raise DatasetError(f"dataset {path}: unsupported format {path.suffix!r}; use .jsonl or .parquet")
    if not records:
        raise DatasetError(f"dataset {path} has no rows")
    return [_row(i, raw, str(path)) for i, raw in enumerate(records)]


class PromptSampler:
    """Deterministic epoch-shuffled order with a resumable position (saved in checkpoints)."""

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n_rows = n_rows
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        import random

        order = list(range(self.n_rows))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.position >= self.n_rows:
                self.epoch += 1
                self.position = 0
                self._order = self._shuffle(self.epoch)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_rows": self.n_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n_rows"] != self.n_rows:
            raise ValueError(f"checkpoint was taken on a dataset of {state['n_rows']} rows, this one has {self.n_rows}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._shuffle(self.epoch)

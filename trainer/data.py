"""Prompt datasets in the veRL schema: JSONL, Parquet, or a local Hugging Face ``datasets`` dataset.

Each row: ``prompt`` (chat messages or text), ``reward_model.ground_truth``, ``data_source``,
optionally ``extra_info`` — the columns veRL's preprocessing scripts write. Rows are validated up
front so a bad file fails before training, with the row and the field named.

Formats (``dataset_format``): ``jsonl`` and ``parquet`` are read directly (pyarrow); ``hf_disk`` is
a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (pick the split);
``hf_parquet`` and ``hf_json`` go through ``datasets.load_dataset``'s packaged loaders (a file, a
folder of shards or a glob). Only local paths are read: nothing is ever fetched from a hub.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("auto", "jsonl", "parquet", "hf_disk", "hf_parquet", "hf_json")
DEFAULT_SPLIT = "train"


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
        if not prompt:
            raise DatasetError(f"{source} row {index}: field 'prompt' is an empty list of messages")
        for j, message in enumerate(prompt):
            if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                    or not isinstance(message.get("content"), str)):
                raise DatasetError(f"{source} row {index}: prompt[{j}] must be a {{role, content}} message")
    elif not isinstance(prompt, str) or not prompt:
        raise DatasetError(f"{source} row {index}: field 'prompt' must be chat messages or non-empty text")
    reward_model = raw.get("reward_model")
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise DatasetError(f"{source} row {index}: field 'reward_model.ground_truth' is required")
    extra = raw.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise DatasetError(f"{source} row {index}: field 'extra_info' must be an object, "
                           f"got {type(extra).__name__}")
    data_source = raw.get("data_source")
    if data_source is not None and not isinstance(data_source, str):
        raise DatasetError(f"{source} row {index}: field 'data_source' must be text, "
                           f"got {type(data_source).__name__}")
    if isinstance(prompt, list):
        # Parquet stores messages as structs of one schema: a key another message has reads back as None.
        prompt = [{key: value for key, value in message.items() if value is not None} for message in prompt]
    return PromptRow(index=index, prompt=prompt, ground_truth=reward_model["ground_truth"],
                     data_source=data_source or "", extra_info=dict(extra or {}))


def resolve_format(path: Path, dataset_format: str = "auto") -> str:
    """The concrete format of ``path``: ``dataset_format`` itself, or for ``auto`` one read from the path."""
    if dataset_format not in FORMATS:
        raise DatasetError(f"dataset_format: {dataset_format!r} is not one of {', '.join(FORMATS)}")
    if dataset_format in ("hf_parquet", "hf_json"):
        return dataset_format  # a file, a folder or a glob: checked when its files are listed
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if dataset_format != "auto":
        return dataset_format
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            return "hf_disk"
        raise DatasetError(f"dataset {path}: a folder that save_to_disk did not write; set dataset_format "
                           f"(hf_parquet or hf_json) to read its files with datasets' loaders")
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    raise DatasetError(f"dataset {path}: unsupported format {path.suffix!r}; use .jsonl, .parquet or a "
                       f"save_to_disk folder (or set dataset_format)")


def _read_jsonl(path: Path) -> list[Any]:
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {line_no}: invalid JSON: {exc.msg}") from exc
    return records


def _offline_datasets() -> Any:
    """``datasets`` with the hub switched off (set before its first import, which reads the variables)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError("a Hugging Face dataset needs the datasets package: pip install datasets") from exc
    return datasets


def _pick_split(loaded: Any, split: str | None, path: Path) -> Any:
    """One split of a DatasetDict (``split``, default train); a plain Dataset as it is."""
    datasets = _offline_datasets()
    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None and split != DEFAULT_SPLIT:
            raise DatasetError(f"dataset_split: {path} holds a single split; {split!r} cannot be chosen")
        return loaded
    name = split or DEFAULT_SPLIT
    if name not in loaded:
        raise DatasetError(f"dataset_split: {path} has no split {name!r}; it has {', '.join(sorted(loaded))}")
    return loaded[name]


def _data_files(path: Path, dataset_format: str) -> list[str]:
    """The local files behind ``path`` (a file, a folder searched recursively, or a glob); never a hub name."""
    if path.is_dir():
        suffixes = (".parquet",) if dataset_format == "hf_parquet" else (".json", ".jsonl")
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in suffixes)
    elif path.exists():
        files = [str(path)]
    else:
        files = sorted(glob.glob(str(path)))
        if not files:
            raise DatasetError(f"dataset file {path} does not exist (nor does any file match it)")
    if not files:
        raise DatasetError(f"dataset {path}: the folder holds no {dataset_format.removeprefix('hf_')} files")
    return files


def _read_hf(path: Path, dataset_format: str, split: str | None) -> list[Any]:
    datasets = _offline_datasets()
    if dataset_format == "hf_disk":
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset {path}: not a folder written by save_to_disk ({exc})") from None
    else:
        # A packaged loader given local files only: no name is ever resolved on a hub.
        builder = "parquet" if dataset_format == "hf_parquet" else "json"
        loaded = datasets.load_dataset(builder, data_files={split or DEFAULT_SPLIT: _data_files(path, dataset_format)})
    return list(_pick_split(loaded, split, path).to_list())


def load_rows(path: str | Path, *, dataset_format: str = "auto", split: str | None = None) -> list[PromptRow]:
    """Every row of the dataset at ``path``, validated (a :class:`DatasetError` names the bad row and field)."""
    path = Path(path)
    kind = resolve_format(path, dataset_format)
    if kind.startswith("hf_"):
        records = _read_hf(path, kind, split)
    elif split is not None:
        raise DatasetError(f"dataset_split: a {kind} file has no splits; leave dataset_split unset")
    elif kind == "parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    else:
        records = _read_jsonl(path)
    if not records:
        raise DatasetError(f"dataset {path} has no rows")
    return [_row(i, raw, str(path)) for i, raw in enumerate(records)]


def load_config_rows(config: Any) -> list[PromptRow]:
    """The rows of a run config's dataset, with its ``dataset_format`` and ``dataset_split``."""
    return load_rows(config.dataset, dataset_format=config.dataset_format, split=config.dataset_split)


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

"""Loaded teacher models, kept in memory with a bound (least recently used first out).

An entry is keyed by (project, name, revision): a push of weights or a re-registration changes the
revision, so a stale copy is never served; another replica that sees the new revision on disk
reloads the folder and the pushed ``weights.safetensors``. Each entry has a lock: forwards and
weight updates of one model run one at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import ApiError, InvalidInput
from services.common.settings import get_settings
from services.teacher import registry
from services.teacher.registry import TeacherRecord


@dataclass
class LoadedTeacher:
    """A teacher model ready for forwards: the transformers model (eval mode) and its tokenizer."""

    record: TeacherRecord
    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None


def load_teacher(record: TeacherRecord, device: str) -> LoadedTeacher:
    """The folder's model in ``record.dtype`` (as the trainer loads it), with pushed weights applied."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = registry.resolve_model_path(record.path, field="model")
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, record.dtype),
                                                      local_files_only=True)
    if record.kind == "ema" and record.version > 0:
        from safetensors.torch import load_file

        state = load_file(str(registry.weights_path(record)))
        model.load_state_dict(state, strict=False)
    model.to(device)
    model.eval()
    tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedTeacher(record=record, model=model, tokenizer=tokenizer, device=device)


class TeacherCache:
    """At most ``teacher_model_cache_size`` loaded models; the least recently used goes first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], LoadedTeacher] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, record: TeacherRecord) -> LoadedTeacher:
        key = (record.project_id, record.name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.record.revision == record.revision:
                self._entries.move_to_end(key)
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per model at a time; others wait for it
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.record.revision == record.revision:
                    return entry
            try:
                entry = load_teacher(record, get_settings().teacher_device)
            except ApiError:
                raise
            except Exception as exc:  # a broken folder or weights file: the named model is unusable, not a 500
                raise InvalidInput(f"model: teacher model {record.name!r} could not be loaded: "
                                   f"{type(exc).__name__}: {exc}", field="model") from exc
            self.put(entry)
            return entry

    def put(self, entry: LoadedTeacher) -> None:
        key = (entry.record.project_id, entry.record.name)
        bound = get_settings().teacher_model_cache_size
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > bound:
                self._entries.popitem(last=False)

    def forget(self, project_id: str, name: str) -> None:
        with self._lock:
            self._entries.pop((project_id, name), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._entries)


CACHE = TeacherCache()

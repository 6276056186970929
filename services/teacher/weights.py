"""Pushing weights into an ``ema`` teacher model: a safetensors state dict, replaced or EMA-mixed.

``PUT /v1/teacher-models/{name}/weights`` carries the student's state dict θ as safetensors bytes
(names as in ``model.state_dict()``; any subset: tensors not sent keep their value). With ``tau`` each
sent tensor becomes ψ ← (1 − τ)ψ + τθ (:func:`formulas.ema_update`); without it, ψ ← θ. Tensors that
share storage (tied input/output embeddings) are updated once, however many of their names are sent.
The full result is written to ``weights.safetensors`` before the answer, so a restart or another
replica serves the same teacher.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.errors import InvalidInput
from services.teacher import formulas, registry
from services.teacher.model_cache import CACHE, LoadedTeacher
from services.teacher.registry import TeacherRecord

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PushResult:
    record: TeacherRecord
    tensors: int
    elements: int


def parse_state_dict(body: bytes) -> dict[str, torch.Tensor]:
    """The uploaded safetensors state dict; 422 naming ``body`` when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not body:
        raise InvalidInput("body: empty; send a safetensors state dict", field="body")
    try:
        state = load(body)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise InvalidInput(f"body: not a safetensors file ({exc})", field="body") from None
    if not state:
        raise InvalidInput("body: the safetensors file holds no tensors", field="body")
    return state


def _validate(loaded: LoadedTeacher, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import torch

    targets: dict[str, torch.Tensor] = loaded.model.state_dict()
    for name, tensor in state.items():
        if name not in targets:
            raise InvalidInput(f"body: {name!r} is not a tensor of the teacher model", field="body")
        if tuple(tensor.shape) != tuple(targets[name].shape):
            raise InvalidInput(f"body: {name!r} has shape {tuple(tensor.shape)}; the teacher's is "
                               f"{tuple(targets[name].shape)}", field="body")
        if not (tensor.is_floating_point() or tensor.dtype == targets[name].dtype):
            raise InvalidInput(f"body: {name!r} is {tensor.dtype}; the teacher's is {targets[name].dtype}",
                               field="body")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InvalidInput(f"body: {name!r} holds NaN or infinite values", field="body")
    return targets


def push_weights(record: TeacherRecord, state: dict[str, torch.Tensor], tau: float | None) -> PushResult:
    """Apply one push to ``record``'s model and store it; returns the new registration."""
    if record.kind != "ema":
        raise InvalidInput(f"name: {record.name!r} is a local teacher model; only an ema model takes weights",
                           field="name")
    import torch

    with registry.locked(record.project_id, record.name):
        current = registry.read(record.project_id, record.name, field="name")
        loaded = CACHE.get(current)
        with loaded.lock:
            targets = _validate(loaded, state)
            seen: set[int] = set()
            elements = 0
            with torch.no_grad():
                for name, theta in state.items():
                    target = targets[name]
                    pointer = target.untyped_storage().data_ptr()
                    if pointer in seen:
                        continue  # a tied tensor, already updated under another name
                    seen.add(pointer)
                    value = theta if tau is None else formulas.ema_update(target, theta.to(target.device), tau)
                    target.copy_(value.to(target.dtype))
                    elements += target.numel()
            _save(loaded.model, registry.weights_path(current))
            updated = registry.bump_version(current, tau)
            loaded.record = updated
        CACHE.put(loaded)
    return PushResult(record=updated, tensors=len(state), elements=elements)


def _save(model: Any, path: os.PathLike[str]) -> None:
    from safetensors.torch import save_model

    tmp = f"{os.fspath(path)}.{uuid.uuid4().hex}.tmp"
    save_model(model, tmp)
    os.replace(tmp, path)

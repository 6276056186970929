"""CARE parameters, one set per annotation project (``AnnotationProject.care_params`` holds the overrides)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from services.common.errors import InvalidInput


@dataclass(frozen=True)
class CareParams:
    """Every knob of selection and probe training; defaults are the spec's (specs/care.md)."""

    top_p: float = 0.2  # p: share of the batch to buy, ⌈p·N⌉ prompts per step
    reliable_p: float = 0.25  # p₂: share gated as reliable after warm-up, ⌈p₂·N⌉ prompts
    warmup_steps: int = 20  # steps before the reliability gate opens
    buffer_size: int = 2048  # replay buffer of bought, labelled groups
    history_samples: int = 16  # replayed examples added to each training batch
    train_steps: int = 3  # AdamW steps per observation
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    aux_weight: float = 1.5  # stage-1 auxiliary per-response correctness loss
    class_weight_min: float = 0.25
    class_weight_max: float = 4.0
    length_scale: float = 4000.0  # response_length / length_scale, clipped to 1
    prompt_hidden: int = 128
    response_hidden: int = 64
    response_out: int = 512
    head_hidden: int = 256
    seed: int = 0
    # Baselines (random, low_consensus, entropy, low_token_prob, oracle_cag) train only on the prompts
    # they bought, as in the authors' code, so they compare with CARE like for like; off, their unbought
    # prompts train on pseudo-labels at weight 1 (plain RLAVR with that acquisition rule).
    mask_non_gt: bool = True

    def architecture(self) -> tuple[int, int, int, int]:
        return (self.prompt_hidden, self.response_hidden, self.response_out, self.head_hidden)


# name -> (type, low, high, low inclusive, high inclusive)
_BOUNDS: dict[str, tuple[type, float, float, bool, bool]] = {
    "top_p": (float, 0.0, 1.0, False, True),
    "reliable_p": (float, 0.0, 1.0, True, False),
    "warmup_steps": (int, 0, 1_000_000, True, True),
    "buffer_size": (int, 1, 1_000_000, True, True),
    "history_samples": (int, 0, 100_000, True, True),
    "train_steps": (int, 0, 1000, True, True),
    "lr": (float, 0.0, 1.0, False, True),
    "weight_decay": (float, 0.0, 10.0, True, True),
    "grad_clip": (float, 0.0, 1e6, False, True),
    "aux_weight": (float, 0.0, 100.0, True, True),
    "class_weight_min": (float, 0.0, 1.0, False, True),
    "class_weight_max": (float, 1.0, 1e6, True, True),
    "length_scale": (float, 0.0, 1e9, False, True),
    "prompt_hidden": (int, 1, 4096, True, True),
    "response_hidden": (int, 1, 4096, True, True),
    "response_out": (int, 1, 4096, True, True),
    "head_hidden": (int, 1, 4096, True, True),
    "seed": (int, 0, 2**63 - 1, True, True),
}
_FLAGS = {"mask_non_gt"}
assert set(_BOUNDS) | _FLAGS == {f.name for f in fields(CareParams)}


def _check_one(name: str, value: Any) -> int | float:
    kind, low, high, low_in, high_in = _BOUNDS[name]
    field = f"care_params.{name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number, got {type(value).__name__}", field=field)
    number: int | float
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidInput(f"{field} must be a whole number, got {value}", field=field)
        number = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise InvalidInput(f"{field} must be finite", field=field)
    too_low = number < low or (number == low and not low_in)
    too_high = number > high or (number == high and not high_in)
    if too_low or too_high:
        lo, hi = ("[" if low_in else "("), ("]" if high_in else ")")
        raise InvalidInput(f"{field} must lie in {lo}{low:g}, {high:g}{hi}, got {number}", field=field)
    return number


def validate_care_params(params: dict[str, Any]) -> dict[str, Any]:
    """Check a project's CARE overrides; returns them normalised (ints as int, floats as float).

    Raises ``InvalidInput`` whose ``field`` names the parameter, e.g. ``care_params.top_p``.
    """
    if not isinstance(params, dict):
        raise InvalidInput("care_params must be an object", field="care_params")
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in _FLAGS:
            if not isinstance(value, bool):
                raise InvalidInput(f"care_params.{name} must be true or false, got {type(value).__name__}",
                                   field=f"care_params.{name}")
            out[name] = value
            continue
        if name not in _BOUNDS:
            known = ", ".join(sorted(_BOUNDS.keys() | _FLAGS))
            raise InvalidInput(f"care_params.{name} is not a CARE parameter; known: {known}",
                               field=f"care_params.{name}")
        out[name] = _check_one(name, value)
    low = out.get("class_weight_min", CareParams.class_weight_min)
    high = out.get("class_weight_max", CareParams.class_weight_max)
    if low > high:
        raise InvalidInput(f"care_params.class_weight_min ({low}) exceeds class_weight_max ({high})",
                           field="care_params.class_weight_min")
    return out


def care_params_from(overrides: dict[str, Any] | None) -> CareParams:
    """The full parameter set: defaults with the (validated) overrides applied."""
    return CareParams(**validate_care_params(dict(overrides or {})))


"""Per-turn credit of ZipRL episodes: each turn's tokens carry the episode's advantage, reshaped by
Hindsight Response Replay (``trainer.ziprl.hrr``) when it is on.

A ZipRL batch has one row per turn (each turn under the context it was sampled with, see
``trainer.grpo.collate``); ``Batch.row_rollout[r]`` / ``Batch.row_turn[r]`` say which episode and
turn row r is (−1 on padding rows). The token-level advantage of row r is

    Â_{i,t} = A_i + β · (h_{i,t} − h̄_t)     (sign kept; ``trainer.ziprl.hrr.turn_advantages``)

with i = row_rollout[r], t = row_turn[r], on every token of the row (the loss mask selects the
sampled ones); without HRR it is A_i; padding rows get 0. The groups are the consecutive
``group_size`` episodes of the batch (the trainer keeps each prompt's group together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.rollout import Rollout
from trainer.ziprl.hrr import HRRConfig, turn_advantages


def episode_turn_advantages(advantages: Sequence[float], rollouts: Sequence[Rollout], group_size: int,
                            hrr: HRRConfig | None) -> list[list[float]]:
    """Â_{i,t} for every episode i and turn t (A_i on every turn when ``hrr`` is None)."""
    if len(advantages) != len(rollouts):
        raise ValueError(f"{len(advantages)} advantages for {len(rollouts)} episodes")
    if len(rollouts) % group_size:
        raise ValueError(f"{len(rollouts)} episodes are not whole groups of {group_size}")
    turns = [len(r.turn_bounds or []) for r in rollouts]
    if hrr is None:
        return [[float(a)] * n for a, n in zip(advantages, turns, strict=True)]
    out: list[list[float]] = []
    for start in range(0, len(rollouts), group_size):
        group = rollouts[start:start + group_size]
        h = [list(r.turn_h or [0.0] * n) for r, n in zip(group, turns[start:start + group_size], strict=True)]
        out.extend(turn_advantages([float(a) for a in advantages[start:start + group_size]], h, hrr))
    return out


def token_advantages(batch: Any, shaped: Sequence[Sequence[float]]) -> torch.Tensor:
    """(rows, T) advantages of a turn-row batch: row r carries ``shaped[row_rollout[r]][row_turn[r]]``."""
    rows, width = batch.completion_ids.shape
    out = torch.zeros((rows, width), dtype=torch.float32)
    for row, (episode, turn) in enumerate(zip(batch.row_rollout.tolist(), batch.row_turn.tolist(), strict=True)):
        if episode >= 0:
            out[row] = shaped[episode][turn]
    return out


def hrr_metrics(advantages: Sequence[float], shaped: Sequence[Sequence[float]],
                rollouts: Sequence[Rollout]) -> dict[str, float]:
    """``hrr_h_mean`` (mean h_t over every turn of the step) and ``hrr_shift_abs_mean`` (mean |Â − A|)."""
    h = [x for r in rollouts for x in (r.turn_h or [])]
    shifts = [abs(value - a) for a, row in zip(advantages, shaped, strict=True) for value in row]
    return {"hrr_h_mean": sum(h) / len(h) if h else 0.0,
            "hrr_shift_abs_mean": sum(shifts) / len(shifts) if shifts else 0.0}

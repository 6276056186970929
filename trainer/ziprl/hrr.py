"""Hindsight Response Replay (HRR): per-turn context credit and the generalised advantage reshaping.

After an episode, **h_t** measures how much of what the final response needed survived in the
memory the agent had after turn t (the context of turn t + 1)::

    h_t = |{u ∈ N : u survives in memory_t}| / |N|

``N`` is the list of needed units: each a group of strings (the answer, or a supporting fact as
``(subject, relation, object)``) that survives when all of its strings occur, case-insensitively, in
one line (one memory item) of ``memory_t``. With no needed unit, h_t = 0.

**Reshaping** (ZipRL's generalised advantage reshaping), on the tokens of turn t of rollout i::

    Â_{i,t} = A_i + β · (h_{i,t} − h̄_t)

Choices the spec leaves open, and ours (``HRRConfig``):

* β = 0.5 by default.
* ``h̄_t`` when rollouts have different numbers of turns (``group_mean``):
  ``per_turn`` (default) — the mean of h_{j,t} over the rollouts j that have a turn t; a turn only
  one rollout reached gets no shaping (h − h̄ = 0). ``carry_forward`` — a rollout that ended before
  turn t counts with its last h (its final memory). ``pooled`` — one mean over every (rollout, turn)
  of the group.
* **The sign of the outcome advantage never flips** (``floor`` κ, default 0): for A_i > 0,
  Â = max(Â, κ·A_i); for A_i < 0, Â = min(Â, κ·A_i); so a correct rollout's turn is never pushed
  down and a wrong one's never pushed up (κ > 0 also keeps a share of the outcome on every turn).
* A_i = 0 (a group whose rewards are all equal): no shaping by default (``shape_zero_advantage``
  false): the outcome says nothing about the group, and memory credit alone would train compression
  with no evidence that it mattered.

Tokens outside every turn (``token_turns`` −1: the prompt, or observation tokens the loss masks)
keep A_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

GroupMean = Literal["per_turn", "carry_forward", "pooled"]


@dataclass(frozen=True)
class HRRConfig:
    beta: float = 0.5
    group_mean: GroupMean = "per_turn"
    floor: float = 0.0
    shape_zero_advantage: bool = False

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError("beta must be at least 0")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError("floor must be within [0, 1]")
        if self.group_mean not in ("per_turn", "carry_forward", "pooled"):
            raise ValueError(f"group_mean: {self.group_mean!r} is not per_turn, carry_forward or pooled")


def unit_survives(memory_text: str, unit: Sequence[str]) -> bool:
    """Whether every string of ``unit`` occurs (case-insensitively) in one line of ``memory_text``."""
    wanted = [" ".join(s.casefold().split()) for s in unit if s.strip()]
    if not wanted:
        return False
    return any(all(w in " ".join(line.casefold().split()) for w in wanted) for line in memory_text.splitlines())


def hindsight_scores(memory_texts: Sequence[str], needed: Sequence[Sequence[str]]) -> list[float]:
    """h_t for each turn's memory (module docstring)."""
    if not needed:
        return [0.0 for _ in memory_texts]
    return [sum(unit_survives(text, unit) for unit in needed) / len(needed) for text in memory_texts]


def group_baselines(h: Sequence[Sequence[float]], mode: GroupMean = "per_turn") -> list[list[float]]:
    """h̄ for every (rollout, turn) of a group (``mode``: module docstring)."""
    if mode == "pooled":
        flat = [x for row in h for x in row]
        mean = sum(flat) / len(flat) if flat else 0.0
        return [[mean for _ in row] for row in h]
    longest = max((len(row) for row in h), default=0)
    means: list[float] = []
    for t in range(longest):
        if mode == "per_turn":
            present = [row[t] for row in h if len(row) > t]
        elif mode == "carry_forward":
            present = [row[t] if len(row) > t else row[-1] for row in h if row]
        else:
            raise ValueError(f"group_mean: {mode!r} is not per_turn, carry_forward or pooled")
        means.append(sum(present) / len(present))
    return [means[: len(row)] for row in h]


def reshape(advantage: float, h_t: float, baseline_t: float, config: HRRConfig) -> float:
    """Â for one turn: A + β·(h − h̄), its sign kept (module docstring)."""
    if advantage == 0.0 and not config.shape_zero_advantage:
        return 0.0
    shaped = advantage + config.beta * (h_t - baseline_t)
    if advantage > 0:
        return max(shaped, config.floor * advantage)
    if advantage < 0:
        return min(shaped, config.floor * advantage)
    return shaped


def turn_advantages(advantages: Sequence[float], h: Sequence[Sequence[float]],
                    config: HRRConfig | None = None) -> list[list[float]]:
    """Â_{i,t} for a group: ``advantages[i]`` = A_i, ``h[i][t]`` = h_{i,t}."""
    config = config or HRRConfig()
    if len(advantages) != len(h):
        raise ValueError("one h row per rollout")
    baselines = group_baselines(h, config.group_mean)
    return [[reshape(a, x, b, config) for x, b in zip(row, base, strict=True)]
            for a, row, base in zip(advantages, h, baselines, strict=True)]


def token_advantages(advantage: float, shaped_turns: Sequence[float], token_turns: Sequence[int]) -> list[float]:
    """Per-token advantages of one rollout: turn t's tokens carry ``shaped_turns[t]``; turn −1 keeps A."""
    out = []
    for turn in token_turns:
        if turn < 0:
            out.append(advantage)
        elif turn >= len(shaped_turns):
            raise ValueError(f"token_turns: turn {turn} has no h (only {len(shaped_turns)} turns)")
        else:
            out.append(shaped_turns[turn])
    return out

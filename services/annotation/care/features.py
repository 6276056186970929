"""What the probes see of a rollout group, and the labels they learn from a bought answer.

Prompt-branch input: the prompt's hidden state followed by
``[valid_ratio, sorted cluster sizes / n (padded to n), min(response_length / L, 1) per rollout]``.
Response-branch input per rollout: its hidden state followed by
``[valid, own cluster size / n, in majority, min(response_length / L, 1)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLLOUT_EXTRAS = 4


@dataclass(frozen=True)
class GroupView:
    """One rollout group as selection sees it: clusters and features, never ground truth."""

    n: int
    clusters: list[list[int]]  # rollout indices, largest first (clusters[0] is the majority)
    prompt_features: np.ndarray | None = None  # (d,)
    rollout_features: np.ndarray | None = None  # (n, d)
    response_lengths: list[int] | None = None
    mean_token_probs: list[float] | None = None  # per rollout, the mean probability of its tokens
    known: bool = False  # its label was bought at an earlier step

    @property
    def majority_size(self) -> int:
        return len(self.clusters[0]) if self.clusters else 0

    @property
    def majority_ratio(self) -> float:
        return self.majority_size / self.n

    @property
    def feature_dim(self) -> int:
        return 0 if self.prompt_features is None else int(np.asarray(self.prompt_features).shape[-1])


@dataclass(frozen=True)
class LabelledView:
    """A bought, answered group: ``correct[j]`` = rollout j's answer ≡ the bought label."""

    key: str  # stable id of the group (its row id), how the replay buffer refers to it
    view: GroupView
    correct: list[bool]


def valid_mask(view: GroupView) -> np.ndarray:
    """1 for rollouts with a parseable answer (members of some cluster)."""
    mask = np.zeros(view.n, dtype=bool)
    for members in view.clusters:
        mask[members] = True
    return mask


def majority_mask(view: GroupView) -> np.ndarray:
    mask = np.zeros(view.n, dtype=bool)
    if view.clusters:
        mask[view.clusters[0]] = True
    return mask


def _lengths(view: GroupView, length_scale: float) -> np.ndarray:
    if view.response_lengths is None:
        return np.zeros(view.n, dtype=np.float32)
    lengths: np.ndarray = np.minimum(np.asarray(view.response_lengths, dtype=np.float32) / length_scale, 1.0)
    return lengths


def prompt_stats(view: GroupView, length_scale: float) -> np.ndarray:
    """[valid_ratio, sorted cluster sizes / n padded with 0 to n, min(len_j / L, 1) for j < n]."""
    n = view.n
    sizes = np.zeros(n, dtype=np.float32)
    ordered = sorted((len(c) for c in view.clusters), reverse=True)[:n]
    sizes[:len(ordered)] = np.asarray(ordered, dtype=np.float32) / n
    valid_ratio = np.float32(valid_mask(view).sum() / n)
    return np.concatenate([[valid_ratio], sizes, _lengths(view, length_scale)]).astype(np.float32)


def rollout_extras(view: GroupView, length_scale: float) -> np.ndarray:
    """(n, 4): [valid, own cluster size / n, in majority, min(len / L, 1)] per rollout."""
    out = np.zeros((view.n, ROLLOUT_EXTRAS), dtype=np.float32)
    for members in view.clusters:
        out[members, 1] = len(members) / view.n
    out[:, 0] = valid_mask(view)
    out[:, 2] = majority_mask(view)
    out[:, 3] = _lengths(view, length_scale)
    return out


def stage2_class_mask(view: GroupView) -> np.ndarray:
    """Valid values of c (correct rollouts outside the majority): 0 and each non-majority cluster's size."""
    mask = np.zeros(view.n + 1, dtype=bool)
    mask[0] = True
    for members in view.clusters[1:]:
        mask[len(members)] = True
    return mask


def stage2_pool_mask(view: GroupView) -> np.ndarray:
    """Stage 2 pools only over parseable rollouts outside the majority cluster."""
    mask: np.ndarray = valid_mask(view) & ~majority_mask(view)
    return mask


def labels(view: GroupView, correct: list[bool]) -> tuple[int, int]:
    """(y₁, y₂): y₁ = 1[majority cluster is correct]; y₂ = c = Σ_{j ∉ majority} r_j."""
    in_majority = majority_mask(view)
    r = np.asarray(correct, dtype=bool)
    y1 = int(bool(view.clusters) and bool(r[in_majority].any()))
    y2 = int(r[~in_majority].sum())
    return y1, y2


def prompt_input(view: GroupView, dim: int, length_scale: float) -> np.ndarray:
    hidden = np.zeros(dim, dtype=np.float32) if view.prompt_features is None else \
        np.asarray(view.prompt_features, dtype=np.float32).reshape(dim)
    return np.concatenate([hidden, prompt_stats(view, length_scale)])


def rollout_input(view: GroupView, dim: int, length_scale: float) -> np.ndarray:
    hidden = np.zeros((view.n, dim), dtype=np.float32) if view.rollout_features is None else \
        np.asarray(view.rollout_features, dtype=np.float32).reshape(view.n, dim)
    return np.concatenate([hidden, rollout_extras(view, length_scale)], axis=1)

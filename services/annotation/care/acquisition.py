"""Which prompts to buy: top-p acquisition, the reliability gate, advantage weights, baseline scores."""

from __future__ import annotations

import math

import numpy as np

from services.annotation.care.cag import corrective_advantage_gap
from services.annotation.care.features import GroupView, majority_mask

_CEIL_EPS = 1e-9  # 0.1 · 30 is 3.0000000000000004 in floating point; it means 3


def quota(share: float, batch_size: int) -> int:
    """⌈share · N⌉ (the number of prompts a share of the batch stands for)."""
    return max(0, math.ceil(share * batch_size - _CEIL_EPS))


def top_k(scores: list[float] | np.ndarray, eligible: list[bool] | np.ndarray, k: int) -> list[bool]:
    """Mark the k eligible entries with the highest scores (ties: earlier index first)."""
    order = sorted((i for i in range(len(scores)) if eligible[i]), key=lambda i: (-float(scores[i]), i))
    chosen = set(order[:k])
    return [i in chosen for i in range(len(scores))]


def top_p_select(scores: list[float] | np.ndarray, eligible: list[bool] | np.ndarray, p: float) -> list[bool]:
    """Acquisition: among eligible prompts, the top ⌈p · N⌉ by score, N = the whole batch."""
    return top_k(scores, eligible, quota(p, len(scores)))


def reliability_gate(reliability: np.ndarray, p2: float, *, warmed_up: bool) -> list[bool]:
    """After warm-up, the top ⌈p₂ · N⌉ prompts by P(majority correct) are reliable; before it, none."""
    if not warmed_up:
        return [False] * len(reliability)
    return top_k(reliability, [True] * len(reliability), quota(p2, len(reliability)))


def care_pseudo_weight(gap: float, reliable: bool) -> float:
    """Weight of an unbought prompt under CARE: reliable → clip(S_i, 0, 1); otherwise 0 (no training)."""
    return float(min(max(gap, 0.0), 1.0)) if reliable else 0.0


def advantage_weight(*, has_label: bool, pseudo_weight: float) -> float:
    """Bought (ground truth) → 1; otherwise the policy's weight for the pseudo-label."""
    return 1.0 if has_label else pseudo_weight


def low_consensus_score(view: GroupView) -> float:
    """1 − majority_ratio: the lower the consensus, the higher the score."""
    return 1.0 - view.majority_ratio


def cluster_entropy(view: GroupView) -> float:
    """H = −Σ_k (s_k / n) · ln(s_k / n) over answer clusters, each unparseable rollout its own singleton
    (an unreadable answer is as uninformative as a unique one, so an all-unparseable group has ln n)."""
    sizes = [len(c) for c in view.clusters]
    sizes += [1] * (view.n - sum(sizes))
    probs = np.asarray(sizes, dtype=np.float64) / view.n
    return float(-(probs * np.log(probs)).sum())


def low_token_prob_score(view: GroupView) -> float:
    """1 − (mean over the group's rollouts of their mean token probability): the less confident the
    policy was while writing its answers, the higher the score. Needs ``mean_token_probs``."""
    if not view.mean_token_probs:
        raise ValueError("low_token_prob needs each rollout's mean token probability")
    return 1.0 - float(np.mean(np.asarray(view.mean_token_probs, dtype=np.float64)))


def baseline_pseudo_weight(*, mask_non_gt: bool) -> float:
    """Weight of a prompt a baseline did not buy: 0 with ``mask_non_gt`` (train only on bought
    ground truth, the default), else 1 (train on the pseudo-label)."""
    return 0.0 if mask_non_gt else 1.0


def random_scores(batch_size: int, seed: int, step: int) -> np.ndarray:
    """Uniform scores from a generator seeded by (seed, step): reproducible per project and step."""
    return np.random.default_rng([seed, step]).random(batch_size)


def oracle_cag(view: GroupView, correct: list[bool]) -> float:
    """Evaluation only: the exact CAG ‖A(r) − A(r̃)‖₂ with r from the answer key, r̃ = 1[j ∈ majority]."""
    pseudo = majority_mask(view).astype(np.float64)
    return corrective_advantage_gap(np.asarray(correct, dtype=np.float64), pseudo)

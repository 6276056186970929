"""GRPO advantages and the Corrective Advantage Gap (CAG), exact and in closed form from counts."""

from __future__ import annotations

import math

import numpy as np

STD_EPS = 1e-8


def grpo_advantage(rewards: np.ndarray) -> np.ndarray:
    """A(r) = (r − mean r) / std r with the population std; A = 0 when std < 1e-8."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std()
    if std < STD_EPS:
        return np.zeros_like(r)
    advantage: np.ndarray = (r - r.mean()) / std
    return advantage


def corrective_advantage_gap(true_rewards: np.ndarray, pseudo_rewards: np.ndarray) -> float:
    """CAG = ‖A(r) − A(r̃)‖₂ for true rewards r and pseudo (majority-vote) rewards r̃ of one group."""
    return float(np.linalg.norm(grpo_advantage(true_rewards) - grpo_advantage(pseudo_rewards)))


def _norm_sq(k: int, n: int) -> float:
    # A binary vector with k ones standardises to norm² n, unless it is constant (then A = 0).
    return float(n) if 0 < k < n else 0.0


def cag_cost(n: int, x: int, c: int) -> float:
    """Closed-form CAG when the majority has x of n rollouts and c *other* rollouts are correct.

    This is the cost of a *wrong* vote (the case CARE's stage-2 distribution is over): pseudo rewards
    have x ones, true rewards c ones on disjoint rollouts (x + c ≤ n). With m_t = c/n, m_p = x/n,
    s = √(m(1 − m)) and A(t)·A(p) = −c·x / (n·s_t·s_p):

        cost(c)² = n·1[0<c<n] + n·1[0<x<n] + 2·c·x / (n·s_t·s_p)   (cross term only when both s > 0)

    In particular cost(0) = ‖A(pseudo)‖₂ = √n when 0 < x < n (no rollout is correct, so A(true) = 0
    while the pseudo-label still separates the majority), and 0 when x ∈ {0, n}. (specs/care.md,
    corrected: an earlier reading took c = 0 to mean "the vote is right" and cost it 0.)
    """
    if not (0 <= x <= n and 0 <= c <= n - x):
        raise ValueError(f"need 0 ≤ x ≤ n and 0 ≤ c ≤ n − x (n={n}, x={x}, c={c})")
    total = _norm_sq(c, n) + _norm_sq(x, n)
    if 0 < c < n and 0 < x < n:
        s_t = math.sqrt((c / n) * (1 - c / n))
        s_p = math.sqrt((x / n) * (1 - x / n))
        total += 2.0 * c * x / (n * s_t * s_p)
    return math.sqrt(total)


def cost_table(n: int, x: int) -> np.ndarray:
    """[cost(0), …, cost(n)] for majority size x; entries with x + c > n (impossible) are 0."""
    return np.array([cag_cost(n, x, c) if c <= n - x else 0.0 for c in range(n + 1)], dtype=np.float64)


def expected_gap(probs: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """S_i = Σ_c p(c | i) · cost_i(c), row-wise over (N, n + 1) arrays."""
    gaps: np.ndarray = (np.asarray(probs, dtype=np.float64) * np.asarray(costs, dtype=np.float64)).sum(axis=-1)
    return gaps

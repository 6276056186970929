"""The STS formulas, each a small pure function over SAE feature matrices (rows: tokens, columns: features).

STS (SAE-based transferability score) predicts, before fine-tuning, which target domains a
fine-tuning set will move:

1. shift of SAE feature ``d`` between the base run and the in-context run of the fine-tuning data,
   summed over the aligned tokens ``t``: ``shift_d = Σ_t (f_icl[t, d] − f_base[t, d])²``;
2. the shifted dimensions ``D``: the ``k`` largest ``shift_d`` (the paper: k = 100);
3. the score of a target domain: ``score = (1/|D|) Σ_{d∈D} (1/T) Σ_t f[t, d]²`` over its ``T`` tokens;
4. validation: Pearson's r between the scores and the measured accuracy changes.

Choices the spec leaves open: ties in ``shift_d`` go to the lower feature index (a stable sort), so
the selection is deterministic; ``k`` larger than the number of features is an error rather than a
silent clamp; Pearson's r of a constant series is undefined and returned as NaN (never 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def feature_shift(f_icl: torch.Tensor, f_base: torch.Tensor) -> torch.Tensor:
    """``shift_d = Σ_t (f_icl[t, d] − f_base[t, d])²``, one value per feature ``d``.

    Row ``t`` of both matrices must be the same token of the shared continuation (see
    ``trainer.sts.activations.in_context_pairs``); the sum is additive over rows, so it can be
    accumulated batch by batch.
    """
    if f_icl.ndim != 2 or f_icl.shape != f_base.shape:
        raise ValueError(f"f_icl and f_base: need two [tokens, features] matrices of one shape, "
                         f"got {tuple(f_icl.shape)} and {tuple(f_base.shape)}")
    return (f_icl.double() - f_base.double()).pow(2).sum(dim=0)


def top_shifted_dimensions(shift: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` largest ``shift_d``, largest first; ties go to the lower index."""
    if shift.ndim != 1:
        raise ValueError(f"shift: needs one value per feature, got shape {tuple(shift.shape)}")
    if not 1 <= k <= shift.numel():
        raise ValueError(f"k: must be between 1 and the number of features ({shift.numel()}), got {k}")
    order = torch.sort(shift, descending=True, stable=True).indices
    return order[:k]


def domain_score(f_target: torch.Tensor, dims: torch.Tensor) -> float:
    """``score = (1/|D|) Σ_{d∈D} (1/T) Σ_t f[t, d]²``: mean over the shifted dimensions ``D`` of the
    mean squared activation over the target domain's ``T`` tokens."""
    if f_target.ndim != 2 or f_target.shape[0] == 0:
        raise ValueError(f"f_target: needs a non-empty [tokens, features] matrix, got {tuple(f_target.shape)}")
    if dims.numel() == 0:
        raise ValueError("dims: needs at least one dimension")
    return float(f_target.double()[:, dims].pow(2).mean(dim=0).mean())


@dataclass(frozen=True)
class Correlation:
    """Pearson's r of scores against accuracy changes, its two-sided p-value and the number of points."""

    r: float
    p_value: float
    n: int


def pearson(scores: Sequence[float], deltas: Sequence[float]) -> Correlation:
    """Pearson's ``r = Σ (x−x̄)(y−ȳ) / sqrt(Σ (x−x̄)² · Σ (y−ȳ)²)`` (``scipy.stats.pearsonr``).

    Fewer than two points is an error; a constant series gives NaN (r is undefined there).
    """
    from scipy import stats

    if len(scores) != len(deltas):
        raise ValueError(f"scores and deltas: need one delta per score, got {len(scores)} and {len(deltas)}")
    if len(scores) < 2:
        raise ValueError(f"scores: need at least two points for a correlation, got {len(scores)}")
    x = [float(v) for v in scores]
    y = [float(v) for v in deltas]
    if not all(math.isfinite(v) for v in x + y):
        raise ValueError("scores and deltas: every value must be finite")
    if len(set(x)) == 1 or len(set(y)) == 1:
        return Correlation(math.nan, math.nan, len(x))
    result = stats.pearsonr(x, y)
    return Correlation(float(result.statistic), float(result.pvalue), len(x))

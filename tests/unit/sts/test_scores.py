"""The STS formulas against hand-computed values (trainer/sts/scores.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.sts.scores import domain_score, feature_shift, pearson, top_shifted_dimensions
from trainer.sts.transferability import validate


def test_feature_shift_sums_squared_differences_over_tokens() -> None:
    f_base = torch.tensor([[1.0, 0.0, 2.0],
                           [0.0, 3.0, 0.0]])
    f_icl = torch.tensor([[2.0, 0.0, 0.0],
                          [0.0, 1.0, 0.5]])
    # d0: (2−1)² + (0−0)² = 1;  d1: (0−0)² + (1−3)² = 4;  d2: (0−2)² + (0.5−0)² = 4 + 0.25 = 4.25
    assert feature_shift(f_icl, f_base).tolist() == [1.0, 4.0, 4.25]


def test_feature_shift_is_additive_over_batches() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 4, generator=g), torch.rand(5, 4, generator=g)
    whole = feature_shift(a, b)
    parts = feature_shift(a[:2], b[:2]) + feature_shift(a[2:], b[2:])
    assert torch.allclose(whole, parts)


def test_feature_shift_needs_aligned_rows() -> None:
    with pytest.raises(ValueError, match="f_icl and f_base"):
        feature_shift(torch.zeros(3, 2), torch.zeros(2, 2))


def test_top_dimensions_largest_first_ties_to_the_lower_index() -> None:
    shift = torch.tensor([1.0, 4.0, 4.25, 4.0, 0.0])
    # sorted: 4.25 (d2), then the tie 4.0 at d1 and d3 → d1 first, then 1.0 (d0)
    assert top_shifted_dimensions(shift, 3).tolist() == [2, 1, 3]
    assert top_shifted_dimensions(shift, 5).tolist() == [2, 1, 3, 0, 4]
    with pytest.raises(ValueError, match="k: must be between 1 and the number of features"):
        top_shifted_dimensions(shift, 6)
    with pytest.raises(ValueError, match="k:"):
        top_shifted_dimensions(shift, 0)


def test_domain_score_is_mean_over_dims_of_mean_squared_activation() -> None:
    f = torch.tensor([[1.0, 2.0, 9.0],
                      [3.0, 0.0, 9.0]])
    # d0: (1² + 3²)/2 = 5;  d1: (2² + 0²)/2 = 2;  score over D = {0, 1}: (5 + 2)/2 = 3.5 (d2 is not in D)
    assert domain_score(f, torch.tensor([0, 1])) == 3.5
    # D = {2}: (81 + 81)/2 = 81
    assert domain_score(f, torch.tensor([2])) == 81.0
    with pytest.raises(ValueError, match="f_target"):
        domain_score(torch.zeros(0, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="dims"):
        domain_score(f, torch.tensor([], dtype=torch.long))


def test_pearson_against_a_hand_computed_value() -> None:
    # x = (1, 2, 3), y = (2, 1, 4): x̄ = 2, ȳ = 7/3; dx = (−1, 0, 1), dy = (−1/3, −4/3, 5/3)
    # Σ dx·dy = 1/3 + 0 + 5/3 = 2;  Σ dx² = 2;  Σ dy² = (1 + 16 + 25)/9 = 42/9
    # r = 2 / sqrt(2 · 42/9) = 2 / sqrt(84/9) = 6 / sqrt(84) = 0.654653...
    result = pearson([1.0, 2.0, 3.0], [2.0, 1.0, 4.0])
    assert result.r == pytest.approx(6 / math.sqrt(84))
    assert result.n == 3
    assert 0.0 < result.p_value < 1.0


def test_pearson_of_a_constant_series_is_nan_not_zero() -> None:
    result = pearson([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    assert math.isnan(result.r) and result.n == 3
    with pytest.raises(ValueError, match="at least two points"):
        pearson([1.0], [1.0])
    with pytest.raises(ValueError, match="one delta per score"):
        pearson([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        pearson([1.0, math.nan], [1.0, 2.0])


def test_validate_matches_domains_by_name() -> None:
    # the same points as above, given in another order: r = 6/sqrt(84)
    result = validate({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 4.0, "a": 2.0, "b": 1.0})
    assert result.r == pytest.approx(6 / math.sqrt(84))
    with pytest.raises(ValueError, match="unmatched"):
        validate({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})

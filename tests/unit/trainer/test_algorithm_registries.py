"""The advantage-estimator and loss registries: a new algorithm is one decorated function."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    AggregationContext,
    Registry,
    aggregate_loss,
    group_advantages,
    loss_aggregation,
)
from trainer.config import ConfigError, parse_config


@pytest.fixture
def max_token_loss() -> Iterator[str]:
    @loss_aggregation("max_token_test")
    def max_token(masked: torch.Tensor, mask: torch.Tensor, context: AggregationContext) -> torch.Tensor:
        return masked.max()

    yield "max_token_test"
    LOSS_AGGREGATIONS.remove("max_token_test")


@pytest.fixture
def rank_estimator() -> Iterator[str]:
    @ADVANTAGE_ESTIMATORS.register("minus_min_test")
    def minus_min(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None) -> torch.Tensor:
        lowest = grouped.nan_to_num(nan=float("inf")).min(dim=1, keepdim=True).values
        return grouped - lowest

    yield "minus_min_test"
    ADVANTAGE_ESTIMATORS.remove("minus_min_test")


def test_builtin_names_are_the_documented_ones() -> None:
    assert LOSS_AGGREGATIONS.names() == ("grpo", "dr_grpo", "dapo", "bnpo", "seq_mean_token_sum", "cispo")
    assert ADVANTAGE_ESTIMATORS.names() == ("group", "batch", "none", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    assert KL_ESTIMATORS.names() == ("k1", "k2", "k3")
    assert [n for n in LOSS_AGGREGATIONS if LOSS_AGGREGATIONS.get(n).global_token_mean] == ["dapo", "cispo"]
    assert [n for n in LOSS_AGGREGATIONS if LOSS_AGGREGATIONS.get(n).objective == "cispo"] == ["cispo"]


def test_a_registered_loss_is_used_by_aggregate_loss_and_accepted_by_the_config(max_token_loss: str) -> None:
    losses = torch.tensor([[1.0, 5.0, 9.0], [2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # masked losses [[1, 5, 0], [2, 3, 4]]: the largest is 5 (the 9 is padding).
    assert aggregate_loss(losses, mask, max_token_loss).item() == 5.0
    config = parse_config({"model": {"tiny": {}}, "dataset": "data.jsonl", "loss_type": max_token_loss})
    assert config.loss_type == max_token_loss


def test_a_registered_estimator_is_used_by_group_advantages(rank_estimator: str) -> None:
    rewards = torch.tensor([1.0, 3.0, float("nan"), 0.0, 0.0, 2.0])
    # groups [1, 3, nan] and [0, 0, 2], minus each group's lowest valid reward; the NaN one ends as 0.
    out = group_advantages(rewards, 3, scale_rewards=rank_estimator)
    assert out.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0, 2.0]


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"loss_type must be one of 'grpo', 'dr_grpo', 'dapo', 'bnpo', "
                                         r"'seq_mean_token_sum' or 'cispo', got 'ppo'"):
        aggregate_loss(torch.ones(1, 1), torch.ones(1, 1), "ppo")
    with pytest.raises(ValueError, match=r"scale_rewards must be one of 'group', 'batch', 'none', 'rloo', "
                                         r"'reinforce_pp' or 'reinforce_pp_baseline', got 'rank'"):
        group_advantages(torch.ones(2), 2, scale_rewards="rank")
    with pytest.raises(ConfigError, match=r"scale_rewards: must be one of"):
        parse_config({"model": {"tiny": {}}, "dataset": "data.jsonl", "scale_rewards": "rank"})
    with pytest.raises(ConfigError, match=r"kl_estimator: must be one of 'k1', 'k2' or 'k3', got 'k9'"):
        parse_config({"model": {"tiny": {}}, "dataset": "data.jsonl", "kl_estimator": "k9"})


def test_a_name_is_registered_once_and_must_be_an_identifier() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.add("a", 2)
    with pytest.raises(ValueError, match="identifier"):
        registry.add("not a name", 3)
    assert registry.get("a") == 1 and "a" in registry and registry.names() == ("a",)


@pytest.fixture
def length_estimator() -> Iterator[str]:
    from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS, register_estimator

    @register_estimator("times_tokens_test", token_weighted=True)
    def times_tokens(grouped: torch.Tensor, eps: float, token_counts: torch.Tensor | None) -> torch.Tensor:
        return grouped * (token_counts if token_counts is not None else 1.0)

    yield "times_tokens_test"
    ADVANTAGE_ESTIMATORS.remove("times_tokens_test")
    TOKEN_WEIGHTED_ESTIMATORS.discard("times_tokens_test")


def test_a_token_weighted_estimator_gets_the_token_counts(length_estimator: str) -> None:
    from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS

    assert length_estimator in TOKEN_WEIGHTED_ESTIMATORS
    out = group_advantages(torch.tensor([1.0, 2.0]), 2, scale_rewards=length_estimator,
                           token_counts=torch.tensor([3, 5]))
    assert out.tolist() == [3.0, 10.0]


def test_a_registered_kl_estimator_is_used_by_kl_divergence() -> None:
    from trainer.algorithms import kl_divergence

    KL_ESTIMATORS.add("abs_test", lambda logp, ref: (logp - ref).abs())
    try:
        assert kl_divergence(torch.tensor([[0.0]]), torch.tensor([[3.0]]), "abs_test").item() == 3.0
        # The KL clamp applies to any estimator: |−3| capped at 2.
        assert kl_divergence(torch.tensor([[0.0]]), torch.tensor([[3.0]]), "abs_test", kl_clamp=2.0).item() == 2.0
    finally:
        KL_ESTIMATORS.remove("abs_test")

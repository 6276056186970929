"""GRPO-family algorithms as small pure functions on tensors (advantages, losses, DAPO tricks, stats)."""

from __future__ import annotations

from trainer.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    RewardScaling,
    group_advantages,
    group_view,
    nan_std,
    rewards_tensor,
    zero_std_group_fraction,
)
from trainer.algorithms.dapo import informative_groups, overlong_penalty
from trainer.algorithms.policy_loss import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGGREGATIONS,
    AggregationContext,
    ImportanceSamplingLevel,
    LossAggregation,
    LossType,
    PolicyLossOutput,
    aggregate_loss,
    clipped_surrogate,
    grpo_policy_loss,
    importance_weights,
    k3_kl,
    log_ratio,
    loss_aggregation,
)
from trainer.algorithms.registry import Registry
from trainer.algorithms.stats import clip_fractions, entropy_from_logits, masked_mean, token_logprobs

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_AGGREGATIONS",
    "AdvantageEstimator",
    "AggregationContext",
    "ImportanceSamplingLevel",
    "LossAggregation",
    "LossType",
    "PolicyLossOutput",
    "Registry",
    "RewardScaling",
    "aggregate_loss",
    "clip_fractions",
    "clipped_surrogate",
    "entropy_from_logits",
    "group_advantages",
    "group_view",
    "grpo_policy_loss",
    "importance_weights",
    "informative_groups",
    "k3_kl",
    "log_ratio",
    "loss_aggregation",
    "masked_mean",
    "nan_std",
    "overlong_penalty",
    "rewards_tensor",
    "token_logprobs",
    "zero_std_group_fraction",
]

"""The verifier's `nutrition` grader against DiningBench's missing-value rules (trainer/dining/metrics.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from rewardhub.reward_specs import RewardSpec
from services.verifier.graders.registry import grade
from trainer.dining.metrics import nutrition_metrics

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)
GOLD = {"calories": 500, "protein": 20, "carbohydrates": 60, "fat": 10}


def graded(completion: str, truth: Any, **spec: Any) -> Any:
    return grade(SPECS.validate_python({"type": "nutrition", **spec}), completion, truth)


def test_chinese_keys_are_read_like_the_authors_in_completion_and_gold() -> None:
    completion = '{"卡路里": 500, "蛋白质": 20, "碳水化合物": 60, "脂肪": 10}'
    result = graded(completion, GOLD)
    assert result.status == "ok" and result.score == 1.0  # before: no key matched, score 0
    result = graded('{"calories": 550, "protein": 20, "carbohydrates": 60, "fat": 10}',
                    {"卡路里": 500, "蛋白质": 20, "碳水化合物": 60, "脂肪": 10})
    assert result.status == "ok" and result.score == 1.0  # before: invalid_input (gold "lacks" all four)
    # the metric reads the same record the same way: calories error 50 = 10 %
    metric = nutrition_metrics([({"卡路里": 500, "蛋白质": 20, "碳水化合物": 60, "脂肪": 10},
                                 '{"calories": 550, "protein": 20, "carbohydrates": 60, "fat": 10}')])
    assert metric["nutrients"]["calories"]["mape"] == pytest.approx(10.0)


def test_a_missing_value_earns_nothing_even_when_its_metric_error_would_earn_credit() -> None:
    # The metric counts a missing fat as error |gt| = 10, i.e. 100 %: a zero-credit bound of 2.0 would pay
    # (2 − 1) / (2 − 0.1) = 0.526 for it; the grader pays nothing for a missing value.
    result = graded('{"calories": 500, "protein": 20, "carbohydrates": 60}', GOLD, zero_credit_rel_error=2.0)
    assert result.sub_scores["fat"] == 0.0 and result.details["relative_error"]["fat"] is None
    metric = nutrition_metrics([(GOLD, '{"calories": 500, "protein": 20, "carbohydrates": 60}')], per_value=True)
    assert metric["nutrients"]["fat"] == {"n": 1, "missing": 1, "mae": 10.0, "rmse": 10.0, "mape": 100.0}

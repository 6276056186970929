"""How long the gateway waits for the verifier: LLM judges widen the budget, alone or inside a multi."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.rewards import _client_timeout
from services.gateway.schemas import RewardsRequest

RUBRIC = {"type": "rubric", "rubric": "- correct", "timeout_s": 100, "max_concurrency": 8}


def request(n: int, spec: dict, **extra: object) -> RewardsRequest:
    return RewardsRequest.model_validate({"spec": spec, "items": [{"id": str(i), "completion": "x"}
                                                                  for i in range(n)], **extra})


@pytest.fixture(autouse=True)
def default_settings(isolated_env: Path) -> None:
    """Settings from the defaults (http_timeout_s 30)."""


def test_plain_graders_get_a_budget_that_grows_with_the_batch() -> None:
    assert _client_timeout(request(200, {"type": "math"}), {"type": "math"}) == pytest.approx(30 + 200 * 0.05 + 30)


def test_judges_get_their_waves_whether_alone_or_in_a_multi() -> None:
    # 64 items in waves of 8 = 8 waves of up to 100 s each, plus the 30 s margin.
    assert _client_timeout(request(64, RUBRIC), RUBRIC) == 8 * 100 + 30
    multi = {"type": "multi", "graders": {"format": {"type": "regex", "pattern": "x"},
                                          "judge": {**RUBRIC, "max_concurrency": 16}}}
    assert _client_timeout(request(64, multi), multi) == 4 * 100 + 30


def test_a_deadline_decides() -> None:
    assert _client_timeout(request(64, RUBRIC, deadline_s=20), RUBRIC) == 50

"""veRL ``custom_reward_function`` entries backed by rewardhub.

veRL calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` per sample
(naive/prime managers, sync or ``async def``) or a batched variant with lists. veRL needs a
number per sample, so an item that cannot be graded scores 0.0 and its status is returned in
the result dict (veRL logs the extra keys), never silently.

Configure with environment variables (veRL imports the function by path): ``REWARDHUB_URL``,
``REWARDHUB_API_KEY``, ``REWARDHUB_SPEC`` (a stored ``name@version``), ``REWARDHUB_PROJECT_ID``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from rewardhub.client import AsyncRewardClient, RewardBatch, RewardClient, make_items


def _spec() -> str:
    spec = os.environ.get("REWARDHUB_SPEC", "")
    if not spec:
        raise RuntimeError("set REWARDHUB_SPEC to a stored reward spec (name@version) for the veRL adapter")
    return spec


@lru_cache(maxsize=1)
def _client() -> RewardClient:
    return RewardClient()


def _as_dict(batch: RewardBatch) -> list[dict[str, Any]]:
    out = []
    for r in batch.results:
        out.append({"score": r.score if r.ok and r.score is not None else 0.0, "status_ok": float(r.ok),
                    "status": r.status, **{f"sub_{k}": v for k, v in r.sub_scores.items()}})
    return out


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None,
                  **_: Any) -> dict[str, Any]:
    """Per-sample veRL reward: ``{"score", "status", "status_ok", "sub_*"}``."""
    items = make_items([solution_str], ground_truths=[ground_truth], metadata=[{"data_source": data_source}])
    return _as_dict(_client().score(items, _spec(), project_id=os.environ.get("REWARDHUB_PROJECT_ID")))[0]


def compute_score_batch(data_sources: list[str], solution_strs: list[str], ground_truths: list[Any],
                        extra_infos: list[dict[str, Any] | None] | None = None, **_: Any) -> list[dict[str, Any]]:
    """Batched veRL reward (veRL's batch reward manager): one HTTP call for the whole batch."""
    items = make_items(solution_strs, ground_truths=ground_truths,
                       metadata=[{"data_source": d} for d in data_sources])
    return _as_dict(_client().score(items, _spec(), project_id=os.environ.get("REWARDHUB_PROJECT_ID")))


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """Async per-sample veRL reward (for veRL's async reward loop)."""
    items = make_items([solution_str], ground_truths=[ground_truth], metadata=[{"data_source": data_source}])
    async with AsyncRewardClient() as client:
        batch = await client.score(items, _spec(), project_id=os.environ.get("REWARDHUB_PROJECT_ID"))
    return _as_dict(batch)[0]

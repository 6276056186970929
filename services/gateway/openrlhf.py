"""OpenRLHF-compatible `POST /get_reward`: `{query, prompts, labels}` → `{rewards, scores, extra_logs}`."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import ValidationError

from services.common.auth import Principal
from services.common.errors import ApiError, InvalidInput
from services.common.reward_api import RewardItem
from services.gateway import rewards
from services.gateway.schemas import OpenRLHFRewardRequest, OpenRLHFRewardResponse, RewardsRequest


def completion_of(query: str, prompt: str | None) -> str:
    # OpenRLHF sends prompt + response in `query`; the grader wants the response alone.
    if prompt and query.startswith(prompt):
        return query[len(prompt):]
    return query


def _as_invalid_input(error: ValidationError) -> InvalidInput:
    """Name the OpenRLHF field behind a RewardsRequest error (``items[3].completion`` is ``query[3]``)."""
    first = error.errors()[0]
    loc = list(first["loc"])
    if len(loc) >= 2 and loc[0] == "items":
        field = f"query[{loc[1]}]"
    else:
        field = ".".join(str(part) for part in loc) or "body"
    return InvalidInput(f"{field}: {str(first['msg']).removeprefix('Value error, ')}", field=field)


async def get_reward(principal: Principal, body: OpenRLHFRewardRequest, spec_ref: str, project_id: str | None,
                     on_non_ok: Literal["zero", "error"], auth: str) -> OpenRLHFRewardResponse:
    prompts = body.prompts or [None] * len(body.query)
    labels = body.labels or [None] * len(body.query)
    try:
        items = [RewardItem(id=str(i), prompt=prompt or "", completion=completion_of(query, prompt),
                            ground_truth=label)
                 for i, (query, prompt, label) in enumerate(zip(body.query, prompts, labels, strict=True))]
        request = RewardsRequest(project_id=project_id, spec_ref=spec_ref, items=items)
    except ValidationError as exc:
        raise _as_invalid_input(exc) from None
    response = await rewards.score(principal, request, auth, None)
    results = json.loads(bytes(response.body))["results"]
    non_ok = [r for r in results if r["status"] != "ok"]
    if non_ok and on_non_ok == "error":
        first = non_ok[0]
        raise ApiError(f"{len(non_ok)} of {len(results)} items could not be graded; first: item {first['id']} "
                       f"status {first['status']}: {first['details']}", field=f"query[{first['id']}]",
                       code="ungradeable_items", status_code=422)
    # OpenRLHF needs a number per sample: non-ok items score 0.0 and are reported in extra_logs,
    # which OpenRLHF logs, so the rate of ungradeable samples is visible in the run's metrics.
    scores = [float(r["score"]) if r["status"] == "ok" and r["score"] is not None else 0.0 for r in results]
    extra_logs = {
        "reward_ok": [1.0 if r["status"] == "ok" else 0.0 for r in results],
        "reward_timeout": [1.0 if r["status"] == "timeout" else 0.0 for r in results],
        "reward_invalid_input": [1.0 if r["status"] == "invalid_input" else 0.0 for r in results],
        "reward_error": [1.0 if r["status"] == "error" else 0.0 for r in results],
    }
    return OpenRLHFRewardResponse(rewards=scores, scores=scores, extra_logs=extra_logs)

"""The public reward API: `/v1/rewards` and the OpenRLHF-compatible `/get_reward`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.common.validation import IdempotencyKeyHeader, ProjectIdQuery
from services.gateway import openrlhf, rewards
from services.gateway.deps import OnNonOkQuery, PathRewardToken, RewardCaller, RewardTokenPath, SpecRefQuery
from services.gateway.schemas import (
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    RewardsRequest,
    RewardsResponse,
)

router = APIRouter(tags=["rewards"])


@router.post("/v1/rewards", response_model=RewardsResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
async def score_rewards(body: RewardsRequest, request: Request, principal: RewardCaller,
                        idempotency_key: IdempotencyKeyHeader = None) -> Response:
    """Score a batch. Per item: `score` (null unless `status` is `ok`), `status`, `sub_scores`, `details`."""
    return await rewards.score(principal, body, request.headers["authorization"], idempotency_key)


@router.post("/get_reward", response_model=OpenRLHFRewardResponse)
async def openrlhf_get_reward(body: OpenRLHFRewardRequest, request: Request, spec_ref: SpecRefQuery,
                              principal: RewardCaller, project_id: ProjectIdQuery = None,
                              on_non_ok: OnNonOkQuery = "zero") -> OpenRLHFRewardResponse:
    """OpenRLHF `--reward.remote_url` endpoint (key as Bearer, or as the URL's password)."""
    return await openrlhf.get_reward(principal, body, spec_ref, project_id, on_non_ok,
                                     request.headers["authorization"])


@router.post("/get_reward/{token}", response_model=OpenRLHFRewardResponse)
async def openrlhf_get_reward_with_path_token(body: OpenRLHFRewardRequest, spec_ref: SpecRefQuery,
                                              principal: PathRewardToken, token: RewardTokenPath,
                                              project_id: ProjectIdQuery = None,
                                              on_non_ok: OnNonOkQuery = "zero") -> OpenRLHFRewardResponse:
    """OpenRLHF endpoint for clients that only take a URL: `/get_reward/<reward token>?spec_ref=…`."""
    return await openrlhf.get_reward(principal, body, spec_ref, project_id, on_non_ok, f"Bearer {token}")

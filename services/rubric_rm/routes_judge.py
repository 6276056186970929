"""Rubric-guided judging: what the verifier's rubric grader calls with the scoring caller's key."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.auth import Scorer
from services.rubric_rm import operations
from services.rubric_rm.deps import Backend
from services.rubric_rm.schemas import (
    PairwiseJudgeRequest,
    PairwiseJudgeResponse,
    PointwiseJudgeRequest,
    PointwiseJudgeResponse,
)

router = APIRouter(prefix="/v1/judge", tags=["rubric_rm"])


@router.post("/pairwise", response_model=PairwiseJudgeResponse)
async def judge_pairwise(body: PairwiseJudgeRequest, backend: Backend, principal: Scorer) -> PairwiseJudgeResponse:
    """Judge in both orders with a rubric (given, stored, or generated); the verdict is order-invariant."""
    return await operations.judge_pair(principal, body, backend)


@router.post("/pointwise", response_model=PointwiseJudgeResponse)
async def judge_pointwise(body: PointwiseJudgeRequest, backend: Backend, principal: Scorer) -> PointwiseJudgeResponse:
    """A scalar reward in [0, 1]: the share of hard rules passed, principles as a tie-break."""
    return await operations.judge_point(principal, body, backend)

"""Scoring: replies on the four dimensions and the gated hybrid reward (what the `rec` grader calls)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.common.auth import Scorer
from services.rec_rm import operations
from services.rec_rm.deps import Backend
from services.rec_rm.schemas import ScoreRequest, ScoreResponse

router = APIRouter(tags=["rec_rm"])


@router.post("/v1/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, request: Request, principal: Scorer, backend: Backend) -> ScoreResponse:
    """Score each item's reply: instruction following, factual consistency, relevance, behaviour, hybrid.

    Each item and each dimension has its own `status` (ok, invalid_input, timeout, error) and evidence;
    a vetoed reward (failed gate, hallucinated item) is 0 with the reason. Bad requests are a 4xx naming
    the field.
    """
    return await operations.score(principal, body, request.headers.get("authorization"), backend)

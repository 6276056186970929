"""Scoring routes: token log-probs under a teacher context, and AMR-SD advantage modulation."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.auth import TrainerOrAdmin
from services.common.settings import get_settings
from services.teacher import modulation, operations
from services.teacher.operations import check_batch
from services.teacher.schemas import ModulateRequest, ModulateResponse, ScoreRequest, ScoreResponse

router = APIRouter(tags=["teacher"])


@router.post("/v1/score", response_model=ScoreResponse)
def score(body: ScoreRequest, principal: TrainerOrAdmin) -> ScoreResponse:
    """log π_T(y_t | context, y_<t) for every continuation token, and the top-k log-probs per position.

    Each item has its own status (ok, invalid_input, timeout, error); the numbers are the trainer's
    (trainer.logprobs) on the same model, dtype and batch.
    """
    return operations.score(operations.project_for(principal, body.project_id), body)


@router.post("/v1/modulate", response_model=ModulateResponse)
def modulate(body: ModulateRequest, _principal: TrainerOrAdmin) -> ModulateResponse:
    """Per-token advantages Â = A · w and the CIG trace (AMR-SD), at the annealed α of `params.step`."""
    check_batch([item.id for item in body.items])
    return modulation.modulate(body, get_settings().teacher_max_tokens)

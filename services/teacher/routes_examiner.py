"""The pi-Play examiner: task generation with the question-construction path, and difficulty rewards."""

from __future__ import annotations

from fastapi import APIRouter

from services.common.auth import TrainerOrAdmin
from services.teacher import examiner, operations
from services.teacher.deps import Backend
from services.teacher.routes_reflect import chat_backend
from services.teacher.schemas import (
    ExaminerRewardsRequest,
    ExaminerRewardsResponse,
    ExaminerTasksRequest,
    ExaminerTasksResponse,
)

router = APIRouter(prefix="/v1/examiner", tags=["teacher"])


@router.post("/tasks", response_model=ExaminerTasksResponse)
async def tasks(body: ExaminerTasksRequest, backend: Backend, principal: TrainerOrAdmin) -> ExaminerTasksResponse:
    """(question q, question-construction path c, answer o*) per seed; `format_ok` is what r_format rewards."""
    operations.check_batch([item.id for item in body.items])
    chosen = await chat_backend(principal, body.project_id, body.model, backend)
    return await examiner.generate_tasks(chosen, body)


@router.post("/rewards", response_model=ExaminerRewardsResponse)
def rewards(body: ExaminerRewardsRequest, _principal: TrainerOrAdmin) -> ExaminerRewardsResponse:
    """r_d = 1(0<k<n)·(n−k)/(n−1) + r_format per task; advantages normalised within each hop count."""
    operations.check_batch([item.id for item in body.items])
    return examiner.rewards(body)

"""Reflection: Socratic hints from one diagnostic signal, through the leak filter (AMR-SD)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from services.common.auth import TrainerOrAdmin
from services.common.llm.types import ChatBackend
from services.common.settings import get_settings
from services.teacher import operations, reflection
from services.teacher.backends import TeacherChat
from services.teacher.deps import Backend
from services.teacher.schemas import ReflectRequest, ReflectResponse

router = APIRouter(tags=["teacher"])


async def chat_backend(principal: TrainerOrAdmin, project_id: str | None, model: str | None,
                       configured: ChatBackend) -> ChatBackend:
    """The registered teacher model named by `model` (in the request's project), else the configured backend."""
    if model is None:
        if project_id is not None:  # named: still checked against the key
            await asyncio.to_thread(operations.project_for, principal, project_id)
        return configured
    project = await asyncio.to_thread(operations.project_for, principal, project_id)
    return TeacherChat(await asyncio.to_thread(operations.load, project, model))


@router.post("/v1/reflect", response_model=ReflectResponse)
async def reflect(body: ReflectRequest, backend: Backend, principal: TrainerOrAdmin) -> ReflectResponse:
    """A hint per item, or status `rejected` with every leak-filter rejection's reason."""
    operations.check_batch([item.id for item in body.items])
    chosen = await chat_backend(principal, body.project_id, body.model, backend)
    return await reflection.reflect(chosen, body, body.max_hint_chars or get_settings().teacher_max_hint_chars)

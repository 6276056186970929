"""The teacher service's route dependencies: the chat backend that writes hints and examiner tasks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.common.llm.types import ChatBackend
from services.teacher.backends import llm_backend

# The configured LLM backend as a dependency: tests override `llm_backend` with a test double.
Backend = Annotated[ChatBackend, Depends(llm_backend)]

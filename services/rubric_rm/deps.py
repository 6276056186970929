"""rubric_rm's route dependencies: the request's session, the LLM backend, and which projects a list covers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.common.auth import TrainerOrAdmin, ensure_project_access
from services.common.db import SessionDep as SessionDep
from services.common.llm.types import ChatBackend
from services.common.validation import ProjectIdQuery
from services.rubric_rm.backends import judge_backend

# The LLM backend as a dependency: settings pick it; tests override `judge_backend` with a test double.
Backend = Annotated[ChatBackend, Depends(judge_backend)]


def listed_projects(principal: TrainerOrAdmin, project_id: ProjectIdQuery = None) -> set[str] | None:
    """The projects a list covers: the one named (checked against the key), else all the key's (None: every)."""
    if project_id is not None:
        ensure_project_access(principal, project_id)
        return {project_id}
    return None if principal.all_projects else set(principal.project_ids)


ListedProjects = Annotated[set[str] | None, Depends(listed_projects)]

"""retrieval's route dependencies: the request's session, a corpus id in the path, upload options."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Path, Query

from services.common.auth import TrainerOrAdmin, ensure_project_access
from services.common.db import SessionDep as SessionDep
from services.common.validation import ID_PATTERN, ProjectIdQuery

CorpusIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A corpus id (32 hex characters).")]
UploadMode = Annotated[Literal["append", "replace"], Query(description=(
    "append: add the passages (one with an id already in the corpus replaces it); replace: the upload "
    "becomes the whole corpus."))]


def listed_projects(principal: TrainerOrAdmin, project_id: ProjectIdQuery = None) -> set[str] | None:
    """The projects a list covers: the one named (checked against the key), else all the key's (None: every)."""
    if project_id is not None:
        ensure_project_access(principal, project_id)
        return {project_id}
    return None if principal.all_projects else set(principal.project_ids)


ListedProjects = Annotated[set[str] | None, Depends(listed_projects)]

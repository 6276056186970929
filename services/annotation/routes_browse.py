"""The task/record browser's API: a project's tasks with search and filters, in the house pagination envelope."""

from __future__ import annotations

from fastapi import APIRouter

from services.annotation import browse, projects
from services.annotation.deps import BrowseFilters, ProjectPath, SessionDep, Trainer
from services.annotation.label_schema import LabelSchema
from services.annotation.schemas import BrowseRow
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page

router = APIRouter(prefix="/v1/annotation", tags=["data"])


@router.get("/projects/{annotation_project_id}/tasks", response_model=Page[BrowseRow])
def list_tasks(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep, filters: BrowseFilters,
               cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[BrowseRow]:
    """The project's tasks, oldest first: search the prompt text (`q`), filter by `status`, `annotator`,
    `max_agreement`, a `question`'s final `value`. The exports take the same filters."""
    project = projects.accessible(session, principal, annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema)
    return browse.browse_page(session, project.id, schema, filters, cursor, limit)

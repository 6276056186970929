"""UI route: the data browser, a project's tasks with the API's search and filters as a GET form.

For reviewer and admin annotator accounts (members of the project) and admin API keys. Disputed
tasks link into the reviewer screen (``routes_ui_review``).
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from services.annotation import accounts, browse
from services.annotation.deps import ProjectPath, SessionDep
from services.annotation.label_schema import LabelSchema
from services.annotation.models import AnnotationProject
from services.annotation.ui_pages import UI_PREFIX, error_page, render
from services.annotation.ui_session import LoggedIn, Viewer, member_project
from services.common.errors import ApiError, InvalidInput, NotFound
from services.common.pagination import CursorParam

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)
BROWSE_PAGE = 50


def browser_project(session: Session, found: Viewer, annotation_project_id: str) -> AnnotationProject:
    """The project, if an admin key's scope covers it or a reviewer/admin account is its member."""
    if found.key is not None:
        project = session.get(AnnotationProject, annotation_project_id)
        if project is None or not (found.key.all_projects or project.project_id in found.project_ids):
            raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
        return project
    project = member_project(session, found, annotation_project_id)
    assert found.annotator is not None
    accounts.require_adjudicator(found.annotator)
    return project


def form_filters(q: str, status: str, annotator: str, max_agreement: str, question: str,
                 value: str) -> browse.Filters:
    """The GET form's fields as filters (empty fields are no filter); a bad number names its field."""
    agreement = None
    if max_agreement.strip():
        try:
            agreement = float(max_agreement)
        except ValueError:
            raise InvalidInput("max_agreement: give a number from 0 to 1", field="max_agreement") from None
        if not 0 <= agreement <= 1:
            raise InvalidInput("max_agreement: give a number from 0 to 1", field="max_agreement")
    return browse.Filters(q=q.strip() or None, status=status or None, annotator=annotator.strip() or None,
                          max_agreement=agreement, question=question or None,
                          value=value if question else None)


@router.get("/projects/{annotation_project_id}/browse", name="ui_browse")
def browse_page(request: Request, annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep,
                q: str = "", status: str = "", annotator: str = "", max_agreement: str = "", question: str = "",
                value: str = "", cursor: CursorParam = None) -> Response:
    """Search and filter the project's tasks; disputed ones link to the reviewer screen."""
    try:
        project = browser_project(session, found, annotation_project_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    schema = LabelSchema.model_validate(project.label_schema)
    form = {"q": q, "status": status, "annotator": annotator, "max_agreement": max_agreement,
            "question": question, "value": value}
    error = None
    rows, next_cursor = [], None
    try:
        page = browse.browse_page(session, project.id, schema,
                                  form_filters(q, status, annotator, max_agreement, question, value),
                                  cursor, BROWSE_PAGE)
        rows, next_cursor = page.data, page.next_cursor
    except ApiError as exc:
        error = exc
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "cursor"])
    can_review = found.annotator is not None and accounts.can_adjudicate(found.annotator)
    return render(request, "browse.html", {
        "project": project, "schema": schema, "rows": rows, "next_cursor": next_cursor, "form": form,
        "statuses": browse.STATUSES, "error": error, "query": query, "can_review": can_review,
        "title": f"Browse · {project.name}"}, status_code=422 if error is not None else 200, found=found)

"""Routes for label quality: agreement coefficients and per-annotator accuracy (services/annotation/agreement.py).

Two doors to the same figures: the JSON API for admin keys, and a JSON read for the dashboard
page (session cookie), which fetches each project's figures after the page is shown, so a large
project's equivalence checks never hold up the dashboard itself. The figures include accuracy
against the hidden answer key, so neither door is open to annotators.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.annotation import agreement, projects
from services.annotation.deps import Admin, ProjectPath, SessionDep
from services.annotation.locking import project_not_found
from services.annotation.routes_ui_dashboard import dashboard_projects
from services.annotation.schemas import ProjectQuality
from services.annotation.ui_pages import SECURITY_HEADERS, UI_PREFIX
from services.annotation.ui_session import LoggedIn
from services.common.errors import Forbidden

router = APIRouter(prefix="/v1/annotation", tags=["annotation quality"])
# Must be included before the web UI's routers: their last route answers every other /ui path.
ui_router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


@router.get("/projects/{annotation_project_id}/quality", response_model=ProjectQuality)
def quality(annotation_project_id: ProjectPath, principal: Admin, session: SessionDep) -> ProjectQuality:
    """Krippendorff's alpha (nominal), Cohen's kappa (exactly two annotators) and Fleiss' kappa (the same
    number of labels on every task) over tasks with two or more labels, each with its counts; and per
    annotator, accuracy against the hidden answer key, against reviewers' adjudications and on honeypots
    (gold tasks, whose labels count in no agreement figure). Rankings: ordinal alpha over rank positions. A figure
    that does not apply or has nothing to compare is null, with a note saying why."""
    projects.accessible(session, principal, annotation_project_id)
    return agreement.project_quality(session, annotation_project_id)


@ui_router.get("/dashboard/projects/{annotation_project_id}/quality", name="ui_quality")
def dashboard_quality(annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep) -> JSONResponse:
    """The same figures for a dashboard card, to reviewers and admins who see that project there."""
    if not found.sees_dashboard:
        raise Forbidden("the dashboard is for reviewer and admin accounts, or an admin API key")
    if annotation_project_id not in {p.id for p in dashboard_projects(session, found)}:
        raise project_not_found(annotation_project_id)
    figures = agreement.project_quality(session, annotation_project_id)
    return JSONResponse(figures.model_dump(mode="json"), headers=SECURITY_HEADERS)

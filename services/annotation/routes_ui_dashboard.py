"""UI route: the reviewers' and admins' dashboard (budget, queue depth, throughput, agreement)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from services.annotation import accounts, projects, queue
from services.annotation.deps import Now, SessionDep
from services.annotation.models import AnnotationProject
from services.annotation.ui_pages import UI_PREFIX, error_page, render
from services.annotation.ui_session import LoggedIn, Viewer
from services.common.errors import Forbidden

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


def dashboard_projects(session: Session, found: Viewer) -> list[AnnotationProject]:
    if found.key is not None:
        return projects.all_in_scope(session, found.key.all_projects, found.project_ids)
    assert found.annotator is not None
    return accounts.member_projects(session, found.annotator.id)


@router.get("/dashboard", name="ui_dashboard")
def dashboard(request: Request, now: Now, found: LoggedIn, session: SessionDep) -> Response:
    """Budget, queue depth, throughput, agreement and pseudo-label accuracy per project, with charts."""
    if not found.sees_dashboard:
        return error_page(request, Forbidden("the dashboard is for reviewer and admin accounts, or an admin API "
                                             "key"), found)
    pairs = [(p, queue.project_stats(session, p.id, now=now)) for p in dashboard_projects(session, found)]
    cards = [{"project": p, "stats": stats} for p, stats in pairs]
    chart_data = [{"id": p.id, "name": p.name, **stats.model_dump(mode="json")} for p, stats in pairs]
    return render(request, "dashboard.html", {"cards": cards, "chart_data": chart_data, "title": "Dashboard"},
                  found=found)

"""The annotators' and admins' web pages under ``/ui``, assembled from their routers.

- ``routes_ui_login``: home redirect, password and admin-key login, logout;
- ``routes_ui_tasks``: queue, task page, submit, skip, undo, lease renewal;
- ``routes_ui_review``: the reviewer screen (disputed tasks side by side, adjudication; accept/reject of
  single labels with each task's history);
- ``routes_ui_my_labels``: an annotator's own past labels, and editing them;
- ``routes_ui_dashboard``: the reviewers' and admins' dashboard;
- ``routes_ui_browse``: the data browser (search and filters over a project's tasks);
- ``routes_ui_admin``: the admin screens (projects, budgets, schemas, members);
- ``routes_ui_assets``: the UI's scripts, styles and vendored libraries.

Sessions and CSRF are in ``ui_session``; rendering, paths and redirects in ``ui_pages``.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.annotation import (
    routes_ui_admin,
    routes_ui_assets,
    routes_ui_browse,
    routes_ui_dashboard,
    routes_ui_login,
    routes_ui_my_labels,
    routes_ui_review,
    routes_ui_tasks,
)

router = APIRouter()
for part in (routes_ui_login, routes_ui_tasks, routes_ui_review, routes_ui_my_labels, routes_ui_browse,
             routes_ui_dashboard, routes_ui_admin, routes_ui_assets):
    router.include_router(part.router)

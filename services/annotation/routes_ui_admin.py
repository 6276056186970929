"""UI routes: the admin screens, annotation projects and their members as server-rendered forms.

For admin API keys (entered on the login page) and annotator accounts with role ``admin``; reviewer and
annotator accounts get a 403 page. Every form carries the session's CSRF token and goes through the
same service functions as the JSON API (``projects.create``/``change``, ``accounts.create_annotator``,
``accounts.add_existing_member``, ``accounts.remove_member``) after the same request models
(``AnnotationProjectCreate``, ``AnnotationProjectUpdate``, ``AnnotatorCreate``) checked the form: there
is no second copy of the validation. A refused form comes back with status 4xx, the message naming the
field and the typed values; nothing of it is kept. A done one redirects (Post/Redirect/Get).

Scope. An admin key acts with its own tenancy scope. An admin account acts as an admin of the tenancy
projects its annotation projects belong to (``admin_scope``); a project it creates makes it a member,
so the project is on its dashboard too. Routes hold no SQL: lookups are in ``admin_scope``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from services.annotation import accounts, admin_scope, projects
from services.annotation.deps import ItemPath, ProjectPath, SessionDep
from services.annotation.models import AnnotationProject, AnnotatorRole, Policy
from services.annotation.schemas import AnnotationProjectCreate, AnnotationProjectUpdate, AnnotatorCreate
from services.annotation.ui_pages import UI_PREFIX, error_page, notice_of, redirect, render
from services.annotation.ui_session import FormText, LoggedIn, Viewer, check_csrf
from services.common.auth import Principal
from services.common.errors import ApiError, Forbidden, InvalidInput
from services.common.pagination import CursorParam

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)
MEMBERS_PAGE = 100
ADMIN_NOTICES = {"project_created": "Project created.", "settings_saved": "Settings saved.",
                 "account_created": "Account created and added to the project.",
                 "member_added": "Account added to the project.",
                 "already_member": "That account is already a member of this project.",
                 "member_removed": "Account removed from the project (its labels stay).",
                 "not_member": "That account was not a member of this project."}
# Roles the "new account" form offers; the JSON API (AnnotatorCreate) also takes admin.
NEW_ACCOUNT_ROLES = (AnnotatorRole.annotator, AnnotatorRole.reviewer)


def is_admin(found: Viewer) -> bool:
    """An admin API key, or an annotator account whose role is admin."""
    return found.key is not None or (found.annotator is not None and found.annotator.role is AnnotatorRole.admin)


def admin_principal(session: Session, found: Viewer) -> Principal:
    """The caller as the API's service functions see an admin key: an admin key is itself, an admin
    account is scoped to its tenancy (``admin_scope.account_principal``)."""
    if found.key is not None:
        return Principal(key_id=found.key.id, role=found.key.role, all_projects=found.key.all_projects,
                         project_ids=found.project_ids)
    if found.annotator is not None:
        return admin_scope.account_principal(session, found.annotator)
    raise Forbidden("the admin screens are for admin accounts and admin API keys", code="admin_only")


def refused(exc: ValidationError) -> InvalidInput:
    """A request model's first complaint about a form as a 422 naming the field (``label_budget``)."""
    first = exc.errors()[0]
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ())).lstrip(".") or "form"
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidInput(f"{name}: {message}", field=name)


def schema_from_text(text: str) -> Any:
    """The label schema textarea as JSON (empty: the default, one math_answer question)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"label_schema: is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                           field="label_schema") from None


def create_body(form: dict[str, str]) -> AnnotationProjectCreate:
    """The new-project form as the API's create body (pydantic reads the numbers from the text)."""
    data: dict[str, Any] = {"project_id": form["project_id"], "name": form["name"],
                            "label_budget": form["label_budget"] or "0", "overlap_k": form["overlap_k"] or "1",
                            "policy": form["policy"], "guidelines": form["guidelines"]}
    if form["rollouts_per_prompt"].strip():
        data["rollouts_per_prompt"] = form["rollouts_per_prompt"]
    schema = schema_from_text(form["label_schema"])
    if schema is not None:
        data["label_schema"] = schema
    try:  # a bad label schema raises InvalidInput naming e.g. label_schema.questions[1].choices
        return AnnotationProjectCreate.model_validate(data)
    except ValidationError as exc:
        raise refused(exc) from None


def update_body(form: dict[str, str]) -> AnnotationProjectUpdate:
    try:
        return AnnotationProjectUpdate.model_validate({"label_budget": form["label_budget"],
                                                       "overlap_k": form["overlap_k"],
                                                       "guidelines": form["guidelines"]})
    except ValidationError as exc:
        raise refused(exc) from None


def _forbidden(request: Request, found: Viewer) -> Response | None:
    if is_admin(found):
        return None
    return error_page(request, Forbidden("the admin screens are for admin accounts and admin API keys",
                                         code="admin_only"), found)


def _admin_page(request: Request, session: Session, found: Viewer, *, error: ApiError | None = None,
                form: dict[str, str] | None = None) -> Response:
    principal = admin_principal(session, found)
    rows = [{"project": p, "budget": projects.budget_of(p)}
            for p in projects.all_in_scope(session, principal.all_projects, principal.project_ids)]
    tenancies = admin_scope.tenancy_projects(session, principal)
    defaults = {"project_id": tenancies[0].id if tenancies else "", "name": "", "label_budget": "100",
                "overlap_k": "1", "policy": Policy.random.value, "rollouts_per_prompt": "", "label_schema": "",
                "guidelines": ""}
    return render(request, "admin.html", {
        "rows": rows, "tenancies": tenancies, "policies": [p.value for p in Policy], "form": form or defaults,
        "error": error, "notice": ADMIN_NOTICES.get(request.query_params.get("notice", "")) or notice_of(request),
        "title": "Admin"}, status_code=error.status_code if error is not None else 200, found=found)


@router.get("/admin", name="ui_admin")
def admin_home(request: Request, found: LoggedIn, session: SessionDep) -> Response:
    """The annotation projects the caller's tenancy sees (budget, spent) and the new-project form."""
    return _forbidden(request, found) or _admin_page(request, session, found)


@router.post("/admin/projects", name="ui_admin_create")
def admin_create(request: Request, found: LoggedIn, session: SessionDep, csrf_token: FormText = "",
                 project_id: FormText = "", name: FormText = "", label_budget: FormText = "",
                 overlap_k: FormText = "", policy: FormText = "", rollouts_per_prompt: FormText = "",
                 label_schema: FormText = "", guidelines: FormText = "") -> Response:
    """Create a project through ``projects.create`` (as ``POST /v1/annotation/projects``)."""
    if (denied := _forbidden(request, found)) is not None:
        return denied
    form = {"project_id": project_id, "name": name, "label_budget": label_budget, "overlap_k": overlap_k,
            "policy": policy, "rollouts_per_prompt": rollouts_per_prompt, "label_schema": label_schema,
            "guidelines": guidelines}
    try:
        check_csrf(found.csrf, csrf_token)
    except ApiError as exc:
        return error_page(request, exc, found)
    try:
        principal = admin_principal(session, found)
        made = projects.create(session, principal, create_body(form))
        if found.annotator is not None:  # an admin account sees (and may review) what it made
            accounts.add_membership(session, found.annotator.id, made.id)
    except ApiError as exc:
        session.rollback()
        return _admin_page(request, session, found, error=exc, form=form)
    return redirect(request, "ui_admin_project", notice="project_created", annotation_project_id=made.id)


def _project_page(request: Request, session: Session, found: Viewer, project: AnnotationProject, *,
                  cursor: str | None = None, error: ApiError | None = None, form: dict[str, str] | None = None,
                  account_form: dict[str, str] | None = None, status_code: int | None = None) -> Response:
    members, next_cursor = accounts.members_page(session, project.id, cursor, MEMBERS_PAGE)
    settings = form or {"label_budget": str(project.label_budget), "overlap_k": str(project.overlap_k),
                        "guidelines": project.guidelines}
    return render(request, "admin_project.html", {
        "project": project, "budget": projects.budget_of(project), "members": members, "next_cursor": next_cursor,
        "settings": settings, "account_form": account_form or {"username": "", "role": "annotator", "existing": ""},
        "roles": [r.value for r in NEW_ACCOUNT_ROLES], "error": error,
        "notice": ADMIN_NOTICES.get(request.query_params.get("notice", "")),
        "title": f"Admin · {project.name}"},
        status_code=status_code or (error.status_code if error is not None else 200), found=found)


def _scoped(session: Session, found: Viewer, annotation_project_id: str) -> tuple[Principal, AnnotationProject]:
    principal = admin_principal(session, found)
    return principal, projects.accessible(session, principal, annotation_project_id)


@router.get("/admin/projects/{annotation_project_id}", name="ui_admin_project")
def admin_project(request: Request, annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep,
                  cursor: CursorParam = None) -> Response:
    """One project's budget, overlap and guidelines form, and its members with add and remove forms."""
    if (denied := _forbidden(request, found)) is not None:
        return denied
    try:
        _principal, project = _scoped(session, found, annotation_project_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    return _project_page(request, session, found, project, cursor=cursor)


def _project_post(request: Request, session: Session, found: Viewer, annotation_project_id: str,
                  csrf_token: str, act: Callable[[Principal, AnnotationProject], str], *, form: dict[str, str] | None = None,
                  account_form: dict[str, str] | None = None) -> Response:
    """One project form post: admin, CSRF and scope checked (else an error page), then
    ``act(principal, project) -> notice``; refused, nothing is kept and the page comes back with the error."""
    if (denied := _forbidden(request, found)) is not None:
        return denied
    try:
        check_csrf(found.csrf, csrf_token)
        principal, project = _scoped(session, found, annotation_project_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    try:
        notice = act(principal, project)
    except ApiError as exc:
        session.rollback()
        project = projects.get_project(session, annotation_project_id)
        return _project_page(request, session, found, project, error=exc, form=form, account_form=account_form)
    return redirect(request, "ui_admin_project", notice=notice, annotation_project_id=annotation_project_id)


@router.post("/admin/projects/{annotation_project_id}/settings", name="ui_admin_settings")
def admin_settings(request: Request, annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep,
                   csrf_token: FormText = "", label_budget: FormText = "", overlap_k: FormText = "",
                   guidelines: FormText = "") -> Response:
    """Budget, overlap and guidelines through ``projects.change`` (as ``PATCH …/projects/{id}``)."""
    form = {"label_budget": label_budget, "overlap_k": overlap_k, "guidelines": guidelines}

    def act(_principal: Principal, project: AnnotationProject) -> str:
        projects.change(session, project.id, update_body(form))
        return "settings_saved"

    return _project_post(request, session, found, annotation_project_id, csrf_token, act, form=form)


@router.post("/admin/projects/{annotation_project_id}/accounts", name="ui_admin_new_account")
def admin_new_account(request: Request, annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep,
                      csrf_token: FormText = "", username: FormText = "", password: FormText = "",
                      role: FormText = "annotator") -> Response:
    """A new login account in this project, as ``POST …/projects/{id}/annotators``."""
    account_form = {"username": username, "role": role, "existing": ""}

    def act(_principal: Principal, project: AnnotationProject) -> str:
        if role not in {r.value for r in NEW_ACCOUNT_ROLES}:
            raise InvalidInput("role: choose annotator or reviewer", field="role")
        try:
            body = AnnotatorCreate.model_validate({"username": username, "password": password, "role": role})
        except ValidationError as exc:
            raise refused(exc) from None
        accounts.create_annotator(session, body.username, body.password, role=body.role,
                                  display_name=body.display_name, project_ids=[project.id])
        return "account_created"

    return _project_post(request, session, found, annotation_project_id, csrf_token, act, account_form=account_form)


@router.post("/admin/projects/{annotation_project_id}/members", name="ui_admin_add_member")
def admin_add_member(request: Request, annotation_project_id: ProjectPath, found: LoggedIn, session: SessionDep,
                     csrf_token: FormText = "", username: FormText = "") -> Response:
    """An existing account (by username) into this project, through ``accounts.add_existing_member``."""
    account_form = {"username": "", "role": "annotator", "existing": username}

    def act(principal: Principal, project: AnnotationProject) -> str:
        if not username.strip():
            raise InvalidInput("username: give the username of an existing account", field="username")
        _account, added = accounts.add_existing_member(session, principal, project.id, username=username.strip())
        return "member_added" if added else "already_member"

    return _project_post(request, session, found, annotation_project_id, csrf_token, act, account_form=account_form)


@router.post("/admin/projects/{annotation_project_id}/members/{annotator_id}/remove", name="ui_admin_remove_member")
def admin_remove_member(request: Request, annotation_project_id: ProjectPath, annotator_id: ItemPath,
                        found: LoggedIn, session: SessionDep, csrf_token: FormText = "") -> Response:
    """Take an account out of this project (``accounts.remove_member``); its labels stay."""

    def act(_principal: Principal, project: AnnotationProject) -> str:
        return "member_removed" if accounts.remove_member(session, project.id, annotator_id) else "not_member"

    return _project_post(request, session, found, annotation_project_id, csrf_token, act)

"""The annotators' and admins' web pages under ``/ui``: login, queue, task, dashboard, assets.

Pages call the same queue functions as the JSON API (``queue.next_task``, ``submit``, ``skip``,
``undo_last``, ``renew_lease``, ``project_stats``); only the way the caller is identified differs.

Sessions. A login sets one cookie holding ``{annotator or admin key id, CSRF token, password
fingerprint}``, signed with ``settings.secret_key`` (itsdangerous) and valid for 12 hours. It is
HttpOnly, SameSite=Lax, scoped to the UI path and Secure on https. Every form and fetch carries
the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``); the login form
uses the token of an anonymous session cookie set when the login page is shown, and logging in
issues a new token, so a token seen before login is worthless after it. Changing a password
(or disabling the account, or revoking the key) ends its sessions at the next request.

Login limits. Failed logins count per username and per client address, in the database so every
replica agrees (``login_throttle``); past ``login_max_failures_per_account`` or ``…_per_address``
within ``login_window_s`` a login answers 429 with ``Retry-After`` and the password is not even
checked. Wrong admin keys count against the address.

Who sees what. Annotator accounts log in with username and password and label in the projects
they are members of; accounts with role reviewer or admin also see the dashboard of those
projects. An admin API key can be entered on the login page instead: it sees the dashboard of
every annotation project in the key's scope, but labels nothing (labelling is done by people).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Header, Path, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

import webui
from services.annotation import accounts, login_throttle, projects, queue
from services.annotation.deps import ItemPath, Now, ProjectPath, SessionDep
from services.annotation.models import AnnotationProject, Annotator, LabelKind
from services.annotation.schemas import LabelSchema, QueueStats, Submission, TaskView
from services.common.errors import ApiError, Forbidden, InvalidInput, NotFound
from services.common.models import ApiKey, Role
from services.common.settings import get_settings

SESSION_COOKIE = "rewardhub_ui"
SESSION_MAX_AGE_S = 12 * 3600
SESSION_SALT = "rewardhub.webui.session"
CSRF_HEADER = "X-CSRF-Token"
NOTICES = {"submitted": "Saved.", "skipped": "Skipped: you will not be offered that task again.",
           "undone": "Your last answer was taken back; its task is yours again.",
           "logged_out": "You are logged out."}
# Inline scripts are never needed (page data travels in <script type="application/json">);
# KaTeX sets style attributes, hence 'unsafe-inline' for styles only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(webui.TEMPLATES_DIR))

FormText = Annotated[str, Form()]


# ----------------------------------------------------------------------------------- sessions


@dataclass
class SessionData:
    """What the signed cookie holds."""

    csrf: str
    annotator_id: str | None = None
    key_id: str | None = None
    fingerprint: str | None = None

    def dump(self) -> dict[str, str]:
        data = {"c": self.csrf, "a": self.annotator_id, "k": self.key_id, "f": self.fingerprint}
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class Viewer:
    """The logged-in caller of a page: a person (annotator account) or an admin API key."""

    csrf: str
    annotator: Annotator | None = None
    key: ApiKey | None = None
    project_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def name(self) -> str:
        if self.annotator is not None:
            return self.annotator.display_name or self.annotator.username
        return f"admin key {self.key.prefix}…" if self.key is not None else ""

    @property
    def can_label(self) -> bool:
        return self.annotator is not None

    @property
    def sees_dashboard(self) -> bool:
        return self.key is not None or (self.annotator is not None and accounts.can_adjudicate(self.annotator))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().secret_key, salt=SESSION_SALT)


def read_session(request: Request) -> SessionData | None:
    """The cookie's content if its signature is valid and it is younger than 12 hours."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _serializer().loads(raw, max_age=SESSION_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    return SessionData(csrf=data["c"], annotator_id=data.get("a"), key_id=data.get("k"), fingerprint=data.get("f"))


def ui_root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + router.prefix


def ui_path(request: Request, route: str, /, **params: Any) -> str:
    """A path (no scheme or host, so it is right behind any proxy) to a named UI route."""
    return str(request.scope.get("root_path", "")).rstrip("/") + str(request.app.url_path_for(route, **params))


def write_session(request: Request, response: Response, data: SessionData) -> None:
    response.set_cookie(SESSION_COOKIE, _serializer().dumps(data.dump()), max_age=SESSION_MAX_AGE_S,
                        path=ui_root(request), httponly=True, samesite="lax", secure=request.url.scheme == "https")


def password_fingerprint(annotator: Annotator) -> str:
    # Changes when the password does, which ends the sessions made with the old one.
    return hashlib.sha256((annotator.password_hash or "").encode()).hexdigest()[:16]


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def check_csrf(expected: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Forbidden("the form's security token is missing or out of date; reload the page and try again",
                        field="csrf_token", code="csrf_failed")


def _login_redirect(request: Request) -> StarletteHTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = ui_path(request, "ui_login") + f"?next={quote(target, safe='/')}"
    return StarletteHTTPException(303, "log in first", headers={"Location": url})


def load_viewer(request: Request, session: Session) -> Viewer | None:
    """The caller behind a valid session cookie, checked against the database on every request."""
    data = read_session(request)
    if data is None:
        return None
    if data.annotator_id is not None:
        annotator = session.get(Annotator, data.annotator_id)
        if (annotator is None or annotator.disabled_at is not None or annotator.password_hash is None
                or not hmac.compare_digest(password_fingerprint(annotator), data.fingerprint or "")):
            return None
        return Viewer(csrf=data.csrf, annotator=annotator)
    if data.key_id is not None:
        key = session.get(ApiKey, data.key_id)
        if key is None or key.revoked_at is not None or key.role is not Role.admin:
            return None
        return Viewer(csrf=data.csrf, key=key, project_ids=frozenset(p.id for p in key.projects))
    return None


def viewer(request: Request, session: SessionDep) -> Viewer:
    """Dependency: the logged-in caller, or a redirect to the login page."""
    found = load_viewer(request, session)
    if found is None:
        raise _login_redirect(request)
    return found


LoggedIn = Annotated[Viewer, Depends(viewer)]


def labeller(found: LoggedIn) -> Viewer:
    if found.annotator is None:
        raise Forbidden("labelling needs an annotator account; an admin API key only sees the dashboard")
    return found


Labeller = Annotated[Viewer, Depends(labeller)]


def member_project(session: Session, found: Viewer, annotation_project_id: str) -> AnnotationProject:
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None or found.annotator is None or not accounts.is_member(session, found.annotator.id, project.id):
        raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
    return project


def guarded_project(session: Session, found: Viewer, annotation_project_id: str, csrf_token: str) -> AnnotationProject:
    """For a form post: the CSRF token must match and the account must be a member of the project."""
    check_csrf(found.csrf, csrf_token)
    return member_project(session, found, annotation_project_id)


# ------------------------------------------------------------------------------------ rendering


def render(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200,
           found: Viewer | None = None) -> HTMLResponse:
    missing = webui.missing_vendor()
    base = {"ui": lambda route, **params: ui_path(request, route, **params), "viewer": found,
            "csrf": found.csrf if found is not None else context.get("csrf", ""),
            "vendor_missing": missing, "install_hint": webui.INSTALL_HINT,
            "csrf_header": CSRF_HEADER}
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, exc: ApiError, found: Viewer | None = None) -> HTMLResponse:
    return render(request, "error.html", {"error": exc, "title": "Something went wrong"},
                  status_code=exc.status_code, found=found)


def redirect(request: Request, route: str, /, *, notice: str | None = None, **params: Any) -> RedirectResponse:
    url = ui_path(request, route, **params) + (f"?notice={notice}" if notice else "")
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def safe_next(request: Request, target: str) -> str | None:
    """A post-login target only if it is a UI path of this service (no open redirect)."""
    root = ui_root(request) + "/"
    if target.startswith(root) and not target.startswith("//") and "\\" not in target and "://" not in target:
        return target
    return None


# ---------------------------------------------------------------------------------- login/logout


@router.get("/", name="ui_home")
def home(request: Request, session: SessionDep) -> Response:
    found = load_viewer(request, session)
    if found is None:
        return redirect(request, "ui_login")
    return redirect(request, "ui_queue" if found.can_label else "ui_dashboard")


def _login_page(request: Request, *, error: str | None = None, status_code: int = 200, next_url: str = "",
                username: str = "") -> HTMLResponse:
    data = read_session(request)
    fresh = data is None or data.annotator_id is not None or data.key_id is not None
    anonymous = SessionData(csrf=new_csrf()) if fresh or data is None else data
    notice = NOTICES.get(request.query_params.get("notice", ""))
    response = render(request, "login.html", {"csrf": anonymous.csrf, "error": error, "notice": notice,
                                              "next": next_url, "username": username, "title": "Log in"},
                      status_code=status_code)
    write_session(request, response, anonymous)
    return response


@router.get("/login", name="ui_login")
def login_page(request: Request, next: str = "") -> HTMLResponse:
    return _login_page(request, next_url=safe_next(request, next) or "")


def _login_csrf_ok(request: Request, token: str) -> bool:
    data = read_session(request)
    return data is not None and bool(token) and hmac.compare_digest(data.csrf.encode(), token.encode())


def client_address(request: Request) -> str:
    """The caller's address as the ASGI server saw it (``scope["client"]``).

    Behind a reverse proxy that is the proxy's address, so every user would share one address
    limit: run uvicorn with ``--proxy-headers --forwarded-allow-ips=<the proxy's address>`` so
    that it puts the ``X-Forwarded-For`` client there. The header is never read here directly,
    since any client can send one.
    """
    return request.client.host if request.client is not None and request.client.host else "unknown"


def _locked_page(request: Request, attempt: login_throttle.Attempt, *, next_url: str,
                 username: str = "") -> HTMLResponse:
    minutes = max(1, math.ceil(attempt.retry_after_s / 60))
    error = (f"Too many failed login attempts for this account or from this address. Logging in is locked; "
             f"try again in {minutes} minute{'s' if minutes != 1 else ''}.")
    response = _login_page(request, error=error, status_code=429, next_url=next_url, username=username)
    response.headers["Retry-After"] = str(attempt.retry_after_s)
    return response


@router.post("/login", name="ui_login_submit")
def login(request: Request, now: Now, session: SessionDep, username: FormText = "", password: FormText = "",
          csrf_token: FormText = "", next: FormText = "") -> Response:
    """Password login, limited per username and per address (see ``login_throttle``)."""
    if not _login_csrf_ok(request, csrf_token):
        return _login_page(request, error="Your login form expired. Please enter your details again.",
                           status_code=403, next_url=next, username=username)
    annotator = None
    if username.strip() and password:
        attempt = login_throttle.begin(username, client_address(request), now=now)
        if attempt.refused:
            return _locked_page(request, attempt, next_url=next, username=username)
        annotator = accounts.authenticate(session, username.strip(), password)
        login_throttle.finish(attempt, succeeded=annotator is not None)
    if annotator is None:
        return _login_page(request, error="Wrong username or password.", status_code=401, next_url=next,
                           username=username)
    target = safe_next(request, next) or ui_path(request, "ui_queue")
    response = RedirectResponse(target, status_code=303)
    write_session(request, response, SessionData(csrf=new_csrf(), annotator_id=annotator.id,
                                                 fingerprint=password_fingerprint(annotator)))
    return response


@router.post("/login/key", name="ui_login_key")
def login_with_key(request: Request, now: Now, session: SessionDep, api_key: FormText = "",
                   csrf_token: FormText = "", next: FormText = "") -> Response:
    """Admin-key login; wrong keys count against the address like wrong passwords."""
    if not _login_csrf_ok(request, csrf_token):
        return _login_page(request, error="Your login form expired. Please enter your details again.",
                           status_code=403, next_url=next)
    key = None
    if api_key.strip():
        attempt = login_throttle.begin(None, client_address(request), now=now)
        if attempt.refused:
            return _locked_page(request, attempt, next_url=next)
        key = accounts.admin_key(session, api_key.strip())
        login_throttle.finish(attempt, succeeded=key is not None and key.revoked_at is None)
    if key is None or key.revoked_at is not None:
        return _login_page(request, error="That API key is not valid.", status_code=401, next_url=next)
    if key.role is not Role.admin:
        return _login_page(request, error=f"The dashboard needs an admin API key; this key's role is "
                                          f"{key.role.value}.", status_code=403, next_url=next)
    target = safe_next(request, next) or ui_path(request, "ui_dashboard")
    response = RedirectResponse(target, status_code=303)
    write_session(request, response, SessionData(csrf=new_csrf(), key_id=key.id))
    return response


@router.post("/logout", name="ui_logout")
def logout(request: Request, found: LoggedIn, csrf_token: FormText = "") -> Response:
    check_csrf(found.csrf, csrf_token)
    response = redirect(request, "ui_login", notice="logged_out")
    response.delete_cookie(SESSION_COOKIE, path=ui_root(request), httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response


# ------------------------------------------------------------------------------------- queue


def _my_counts(stats: QueueStats, annotator_id: str) -> tuple[int, int]:
    mine = next((a for a in stats.annotators if a.annotator_id == annotator_id), None)
    return (mine.submitted, mine.skipped) if mine is not None else (0, 0)


def _progress(stats: QueueStats, annotator_id: str) -> dict[str, Any]:
    submitted, skipped = _my_counts(stats, annotator_id)
    total = stats.tasks_open + stats.tasks_in_adjudication + stats.tasks_done
    return {"submitted": submitted, "skipped": skipped, "open": stats.tasks_open, "done": stats.tasks_done,
            "adjudication": stats.tasks_in_adjudication, "total": total}


@router.get("/queue", name="ui_queue")
def queue_page(request: Request, now: Now, found: LoggedIn, session: SessionDep) -> Response:
    if not found.can_label:
        return redirect(request, "ui_dashboard")
    assert found.annotator is not None
    rows = []
    for project in accounts.member_projects(session, found.annotator.id):
        stats = queue.project_stats(session, project.id, now=now)
        rows.append({"project": project, "progress": _progress(stats, found.annotator.id)})
    return render(request, "queue.html", {"rows": rows, "title": "Your queue",
                                          "notice": NOTICES.get(request.query_params.get("notice", ""))}, found=found)


# -------------------------------------------------------------------------------------- task


def _task_context(session: Session, project: AnnotationProject, annotator: Annotator, view: TaskView | None,
                  now: datetime | None) -> dict[str, Any]:
    stats = queue.project_stats(session, project.id, now=now)
    return {"project": project, "task": view, "progress": _progress(stats, annotator.id),
            "schema": view.label_schema if view is not None else LabelSchema.model_validate(project.label_schema),
            "submission_id": uuid.uuid4().hex, "undo_key": uuid.uuid4().hex, "form": {},
            "lease_seconds": project.lease_seconds, "title": f"Label · {project.name}"}


def _task_page(request: Request, session: Session, found: Viewer, project: AnnotationProject,
               now: datetime | None, *, error: ApiError | None = None, form: dict[str, Any] | None = None,
               status_code: int = 200) -> HTMLResponse:
    assert found.annotator is not None
    view = queue.next_task(session, project.id, found.annotator.id, now=now)
    context = _task_context(session, project, found.annotator, view, now)
    context.update(error=error, notice=NOTICES.get(request.query_params.get("notice", "")), form=form or {})
    return render(request, "task.html", context, status_code=status_code, found=found)


@router.get("/projects/{annotation_project_id}/task", name="ui_task")
def task_page(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller,
              session: SessionDep) -> Response:
    """Lease the next task (or show the one already leased) with the answer form."""
    try:
        project = member_project(session, found, annotation_project_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    return _task_page(request, session, found, project, now)


def submission_from_form(submission_id: str, choice: str, answer: str, ambiguous: str,
                         rationale: str) -> Submission:
    """The queue's Submission for what the form says: the flag wins, then a picked candidate, then the
    typed answer (typing without picking means "my own answer")."""
    note = rationale.strip() or None
    fields: dict[str, Any] = {"submission_id": submission_id, "rationale": note}
    if ambiguous:
        fields["kind"] = LabelKind.ambiguous
    elif choice.startswith("candidate-"):
        index = choice.removeprefix("candidate-")
        if not index.isdigit():
            raise InvalidInput(f"unknown choice {choice!r}", field="choice")
        fields["candidate"] = int(index)
    elif answer.strip():
        fields["answer"] = answer
    else:
        raise InvalidInput("pick one of the candidate answers, type your own answer, or flag the prompt as "
                           "ambiguous", field="answer")
    try:
        return Submission.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or "answer"
        raise InvalidInput(f"{name}: {first.get('msg', 'invalid value')}", field=name) from exc


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/submit", name="ui_submit")
def submit(request: Request, annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
           found: Labeller, session: SessionDep, csrf_token: FormText = "", submission_id: FormText = "",
           choice: FormText = "", answer: FormText = "", ambiguous: FormText = "",
           rationale: FormText = "") -> Response:
    form = {"assignment_id": assignment_id, "choice": choice, "answer": answer, "ambiguous": bool(ambiguous),
            "rationale": rationale}
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
    except ApiError as exc:
        return error_page(request, exc, found)
    try:
        body = submission_from_form(submission_id or uuid.uuid4().hex, choice, answer, ambiguous, rationale)
        assert found.annotator is not None
        queue.submit(session, project.id, found.annotator.id, assignment_id, body, now=now)
    except ApiError as exc:
        # Nothing of the refused submission is kept; the page comes back with the typed values.
        session.rollback()
        return _task_page(request, session, found, project, now, error=exc, form=form, status_code=exc.status_code)
    return redirect(request, "ui_task", notice="submitted", annotation_project_id=project.id)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/skip", name="ui_skip")
def skip(request: Request, annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
         found: Labeller, session: SessionDep, csrf_token: FormText = "") -> Response:
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
        assert found.annotator is not None
        queue.skip(session, project.id, found.annotator.id, assignment_id, now=now)
    except ApiError as exc:
        session.rollback()
        return error_page(request, exc, found)
    return redirect(request, "ui_task", notice="skipped", annotation_project_id=project.id)


@router.post("/projects/{annotation_project_id}/undo", name="ui_undo")
def undo(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller, session: SessionDep,
         csrf_token: FormText = "", undo_key: FormText = "") -> Response:
    """Take back the last answer. ``undo_key`` is fresh on each page, so a double press undoes once."""
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
    except ApiError as exc:
        return error_page(request, exc, found)
    try:
        assert found.annotator is not None
        queue.undo_once(session, project.id, found.annotator.id, undo_key[:200] or None, now=now)
    except ApiError as exc:
        session.rollback()
        if exc.code == "nothing_to_undo":
            return _task_page(request, session, found, project, now, error=exc, status_code=exc.status_code)
        return error_page(request, exc, found)
    return redirect(request, "ui_task", notice="undone", annotation_project_id=project.id)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/renew", name="ui_renew")
def renew(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now, found: Labeller,
          session: SessionDep, csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None) -> JSONResponse:
    """The task page's heartbeat (fetch with the CSRF header) while the annotator works."""
    check_csrf(found.csrf, csrf)
    project = member_project(session, found, annotation_project_id)
    assert found.annotator is not None
    view = queue.renew_lease(session, project.id, found.annotator.id, assignment_id, now=now)
    return JSONResponse({"lease_expires_at": view.lease_expires_at.isoformat()}, headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------------- dashboard


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


# ------------------------------------------------------------------------------------ assets


def _asset(path: Any, media_type: str | None = None) -> FileResponse:
    response = FileResponse(path, media_type=media_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("/static/{name}", name="ui_static")
def static(name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]+\.(js|css)$")]) -> FileResponse:
    path = webui.STATIC_DIR / name
    if not path.is_file():
        raise NotFound(f"no static file {name!r}", field="name")
    return _asset(path)


@router.get("/vendor/{library}/{relative:path}", name="ui_vendor")
def vendor(library: str, relative: str) -> FileResponse:
    """KaTeX and Chart.js from webui/node_modules (installed by ``npm ci --prefix webui``)."""
    path = webui.resolve_vendor_file(library, relative)
    if path is None:
        if library in webui.VENDOR_DIST and library in webui.missing_vendor():
            raise NotFound(f"{library} is not installed; run `{webui.INSTALL_HINT}` in the repository",
                           field="library", code="vendor_missing")
        raise NotFound(f"no file {relative!r} in {library!r}", field="relative")
    return _asset(path)

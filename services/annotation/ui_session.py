"""Who is looking at a web UI page: the signed session cookie, CSRF tokens, and the page dependencies.

Sessions. A login sets one cookie holding ``{annotator or admin key id, CSRF token, password
fingerprint}``, signed with ``settings.secret_key`` (itsdangerous) and valid for 12 hours. It is
HttpOnly, SameSite=Lax, scoped to the UI path and Secure on https. Every form and fetch carries
the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``); the login form
uses the token of an anonymous session cookie set when the login page is shown, and logging in
issues a new token, so a token seen before login is worthless after it. Changing a password
(or disabling the account, or revoking the key) ends its sessions at the next request.

Who sees what. Annotator accounts log in with username and password and label in the projects
they are members of; accounts with role reviewer or admin also see the dashboard of those
projects. An admin API key can be entered on the login page instead: it sees the dashboard of
every annotation project in the key's scope, but labels nothing (labelling is done by people).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Form, Request
from fastapi.responses import Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.annotation import accounts
from services.annotation.deps import SessionDep
from services.annotation.models import AnnotationProject, Annotator
from services.annotation.ui_pages import ui_path, ui_root
from services.common.errors import Forbidden, NotFound
from services.common.models import ApiKey, Role
from services.common.settings import get_settings

SESSION_COOKIE = "rewardhub_ui"
SESSION_MAX_AGE_S = 12 * 3600
SESSION_SALT = "rewardhub.webui.session"
# Post/Redirect/Get: a refused form's error and typed values travel to the next page in a signed,
# HttpOnly cookie read once (never in the URL, where answers would land in logs and history).
FLASH_COOKIE = "rewardhub_ui_flash"
FLASH_MAX_AGE_S = 120
FLASH_SALT = "rewardhub.webui.flash"
FLASH_MAX_BYTES = 3000  # browsers keep ~4 KB per cookie; longer typed text is dropped, with a note

FormText = Annotated[str, Form()]


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


def write_session(request: Request, response: Response, data: SessionData) -> None:
    response.set_cookie(SESSION_COOKIE, _serializer().dumps(data.dump()), max_age=SESSION_MAX_AGE_S,
                        path=ui_root(request), httponly=True, samesite="lax", secure=request.url.scheme == "https")


@dataclass
class Flash:
    """A refused form, carried across its redirect: the error and what the annotator had typed."""

    owner: str  # annotator id: another account's browser session never sees it
    project_id: str
    message: str
    form: dict[str, Any] = field(default_factory=dict)
    dropped: bool = False  # the typed text was too long for a cookie and was not kept


def _flash_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_settings().secret_key, salt=FLASH_SALT)


def flash_value(flash: Flash) -> str:
    """The signed cookie value; without the typed text when keeping it would pass FLASH_MAX_BYTES."""
    data = {"o": flash.owner, "p": flash.project_id, "m": flash.message[:500], "f": flash.form, "d": flash.dropped}
    value = _flash_serializer().dumps(data)
    if len(value) <= FLASH_MAX_BYTES:
        return value
    kept = {k: v for k, v in flash.form.items() if k in ("assignment_id", "choice", "ambiguous")}
    return str(_flash_serializer().dumps({**data, "f": kept, "d": True}))


def write_flash(request: Request, response: Response, flash: Flash) -> None:
    response.set_cookie(FLASH_COOKIE, flash_value(flash), max_age=FLASH_MAX_AGE_S, path=ui_root(request),
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")


def read_flash(request: Request, owner: str, project_id: str) -> Flash | None:
    """The flash left for this annotator and project, if signed by us and under two minutes old."""
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        data = _flash_serializer().loads(raw, max_age=FLASH_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("o") != owner or data.get("p") != project_id:
        return None
    form = data.get("f")
    return Flash(owner=owner, project_id=project_id, message=str(data.get("m", "")),
                 form=form if isinstance(form, dict) else {}, dropped=bool(data.get("d")))


def clear_flash(request: Request, response: Response) -> None:
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path=ui_root(request), httponly=True, samesite="lax")


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

"""UI routes: the home redirect, password and admin-key login, logout.

Login limits: failed logins count per username and per client address, in the database so every
replica agrees (``login_throttle``); past the limits a login answers 429 with ``Retry-After`` and the
password is not even checked. Wrong admin keys count against the address.
"""

from __future__ import annotations

import hmac
import math

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.annotation import accounts, login_throttle
from services.annotation.deps import Now, SessionDep
from services.annotation.ui_pages import UI_PREFIX, notice_of, redirect, render, safe_next, ui_path, ui_root
from services.annotation.ui_session import (
    SESSION_COOKIE,
    FormText,
    LoggedIn,
    SessionData,
    check_csrf,
    load_viewer,
    new_csrf,
    password_fingerprint,
    read_session,
    write_session,
)
from services.common.models import Role

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


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
    notice = notice_of(request)
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

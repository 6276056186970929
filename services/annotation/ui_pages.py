"""The web UI's page plumbing: paths to named UI routes, template rendering, redirects, notices.

Every UI router lives under :data:`UI_PREFIX`; paths are built without scheme or host (so they are
right behind any proxy) from the ASGI ``root_path`` the page was served under.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from mdit_py_plugins.dollarmath import dollarmath_plugin

import webui
from services.common.errors import ApiError

if TYPE_CHECKING:
    from services.annotation.ui_session import Viewer

UI_PREFIX = "/ui"
CSRF_HEADER = "X-CSRF-Token"
NOTICES = {"submitted": "Saved.", "skipped": "Never shown again: you will not be offered that task again.",
           "deferred": "Put off: that task comes back to you once you have seen the others.",
           "undone": "Your last answer was taken back; its task is yours again.",
           "guidelines_confirmed": "Thank you for reading the guidelines.",
           "adjudicated": "Settled: your decision is the task's label.",
           "reviewed": "Review saved.",
           "label_edited": "Your label was changed; the old value is kept in the task's history.",
           "logged_out": "You are logged out."}
SAFE_LINK = re.compile(r"^(https?://|/|#|\?|\./|\.\./|[^:/?#]+(/|$|[?#]))", re.IGNORECASE)
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

templates = Jinja2Templates(directory=str(webui.TEMPLATES_DIR))


def ui_root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + UI_PREFIX


def ui_path(request: Request, route: str, /, **params: Any) -> str:
    """A path (no scheme or host, so it is right behind any proxy) to a named UI route."""
    return str(request.scope.get("root_path", "")).rstrip("/") + str(request.app.url_path_for(route, **params))


def notice_of(request: Request) -> str | None:
    """The flash message a redirect asked for (``?notice=…``), if it is one of :data:`NOTICES`."""
    return NOTICES.get(request.query_params.get("notice", ""))


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


def safe_link(url: str) -> bool:
    """Links and images in guidelines may point only at http(s) or at relative paths: no
    ``javascript:``, ``data:``, ``file:`` or any other scheme (a colon before the first slash is one)."""
    return bool(SAFE_LINK.match(url.strip()))


class _GuidelinesMarkdown(MarkdownIt):
    """markdown-it with links and images restricted by :func:`safe_link`."""

    def validateLink(self, url: str) -> bool:  # markdown-it calls it by this name
        return safe_link(url)


@cache
def _markdown() -> MarkdownIt:
    # CommonMark with raw HTML off (it is shown escaped), $…$ / $$…$$ kept as math for KaTeX (math.js).
    # Pandoc's rule for $: no space inside the delimiters, no digit after the closing one ("$5 and $6").
    return _GuidelinesMarkdown("commonmark", {"html": False}).use(
        dollarmath_plugin, allow_labels=False, allow_space=False, allow_digits=False, double_inline=True)


def render_markdown(text: str) -> Markup:
    """Guidelines as HTML that is safe to put in a page: markdown-it escapes every raw tag and
    attribute, and an unsafe link stays plain text."""
    return Markup(_markdown().render(text))

"""UI routes serving files: the UI's own scripts and styles, and vendored KaTeX and Chart.js; and the
UI's "page not found", an HTML page for any other path under /ui (the JSON API keeps its JSON 404)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, HTMLResponse

import webui
from services.annotation.deps import SessionDep
from services.annotation.ui_pages import UI_PREFIX, error_page
from services.annotation.ui_session import load_viewer
from services.common.errors import NotFound

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


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


# Registered last of all UI routes (webui_routes includes this router last), so it only answers paths
# no other route matched. GET and HEAD only: a wrong method on a real page keeps its 405.
@router.api_route("/{unknown:path}", methods=["GET", "HEAD"], name="ui_not_found")
def not_found(request: Request, unknown: str, session: SessionDep) -> HTMLResponse:
    return error_page(request, NotFound(f"there is no page at {request.url.path}", field="path"),
                      load_viewer(request, session))

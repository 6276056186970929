"""UI routes serving files: the UI's own scripts and styles, and vendored KaTeX and Chart.js."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

import webui
from services.annotation.ui_pages import UI_PREFIX
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

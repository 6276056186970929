"""Every service's API docs from the gateway, the one service a browser can always reach.

In compose and on Kubernetes only the gateway (and the annotation UI) are published; the verifier,
sandbox, rubric_rm and trainer listen on the internal network. The gateway therefore serves, for
each of them, ``/docs/services/<name>`` (Swagger UI, with the gateway's offline assets) over
``/docs/services/<name>/openapi.json``, which it fetches from that service at its configured URL
(or in-process on the embedded default). The pages document the internal APIs; their "try it out"
targets the service's internal URL, so it works only from inside that network.

Only registered service names are fetched (the path names a service, never a URL), with a short
timeout; a service that does not answer is a 503 (``upstream_unavailable``) naming it.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Path, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from services.common.app_factory import DOCS_ASSETS_URL
from services.common.errors import NotFound, UpstreamUnavailable
from services.common.registry import services
from services.common.service_client import service_base_url, service_client

router = APIRouter(prefix="/docs/services", include_in_schema=False)
SELF = "gateway"
OPENAPI_TIMEOUT_S = 5.0


def documented_services() -> dict[str, str]:
    """Name → summary of every service whose docs the gateway serves (all but itself)."""
    return {name: spec.summary for name, spec in services().items() if name != SELF}


def docs_index_markdown() -> str:
    """The gateway docs' list of every other service's docs page."""
    lines = ["**Every service's API docs** (fetched by the gateway from each service):", ""]
    lines += [f"- [{name}](/docs/services/{name}): {summary}" for name, summary in documented_services().items()]
    return "\n".join(lines)


def _known(name: str) -> str:
    if name not in documented_services():
        raise NotFound(f"no service {name!r}; known: {', '.join(documented_services())}", field="name")
    return name


async def fetch_openapi(name: str) -> dict[str, Any]:
    """Service ``name``'s OpenAPI document, with ``servers`` pointing at where it really listens."""
    try:
        async with service_client(name, timeout_s=OPENAPI_TIMEOUT_S) as client:
            response = await client.get("/openapi.json")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError, RuntimeError) as exc:
        raise UpstreamUnavailable(f"service {name!r} did not give its API description: "
                                  f"{type(exc).__name__}") from None
    base = service_base_url(name)
    document["servers"] = [{"url": base, "description": f"{name} (internal network)"}] if base else []
    return document


ServiceName = Annotated[str, Path(pattern=r"^[a-z_]{1,40}$", description="A service name.")]


@router.get("/{name}/openapi.json", name="service_openapi")
async def service_openapi(name: ServiceName) -> JSONResponse:
    return JSONResponse(await fetch_openapi(_known(name)))


@router.get("/{name}", name="service_docs")
async def service_docs(request: Request, name: ServiceName) -> HTMLResponse:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    known = _known(name)
    return get_swagger_ui_html(openapi_url=f"{root}/docs/services/{known}/openapi.json",
                               title=f"rewardhub {known} - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png")

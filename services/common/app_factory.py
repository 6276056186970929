"""Build a service's FastAPI app with the contracts every service keeps (errors, health, metrics, logs)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi import HTTPException as FastAPIHTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import health, metrics
from services.common.db import UnitOfWorkMiddleware
from services.common.errors import error_body, install_error_handlers
from services.common.logging import new_request_id, request_id_var, valid_request_id
from services.common.settings import get_settings


class BodySizeLimit:
    """Reject bodies over ``max_bytes`` with a 413 before the handler reads them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI turns other exceptions raised while reading the body into a 400.
                    raise FastAPIHTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes"

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body("payload_too_large", self._message(), "body")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


REQUEST_ID_HEADER = b"x-request-id"
# Set on the (shared) ASGI scope by the outermost RequestIdMiddleware: an app mounted inside another
# (the embedded /services/<name> mounts) reuses the id and adds no second header.
REQUEST_ID_SCOPE_KEY = "rewardhub.request_id"


class RequestIdMiddleware:
    """Tag each request (its log lines, its calls to other services, its Celery tasks) with one id.

    The id is the caller's ``X-Request-ID`` when that is a valid id (:func:`valid_request_id`), else a
    fresh one; the response carries it in exactly one ``x-request-id`` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or REQUEST_ID_SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"").decode("latin-1")
        rid = valid_request_id(given) or new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = rid

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Whatever an inner layer set (a handler's own header) gives way to the one id.
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message["headers"] = [*headers, (REQUEST_ID_HEADER, rid.encode("ascii"))]
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id_var.reset(token)


class ServiceApp(FastAPI):
    """A FastAPI app whose request id is set outside Starlette's ServerErrorMiddleware.

    Middleware added with ``add_middleware`` runs inside that outermost layer, which is where the
    app's catch-all 500 handler runs and logs; wrapped here, the 500's log line and response carry
    the request id like every other.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())


def create_service_app(service: str, routers: Iterable[APIRouter], *, title: str, description: str = "",
                       lifespan: Any = None, version: str = "0.1.0",
                       health_router: APIRouter | None = None) -> FastAPI:
    """A service's app; ``health_router`` replaces the default /healthz + /readyz (database, broker)."""
    settings = get_settings()
    # FastAPI's own /docs and /redoc load their scripts from a CDN (blank pages offline): ours serve them.
    app = ServiceApp(title=title, description=description, version=version, lifespan=lifespan,
                     docs_url=None, redoc_url=None)
    app.state.service_name = service
    install_offline_docs(app)
    install_error_handlers(app)
    app.include_router(health_router or health.router)
    app.include_router(metrics.router)
    for router in routers:
        app.include_router(router)
    # Innermost: commit the request's session before the response starts (a failed commit is a 503).
    app.add_middleware(UnitOfWorkMiddleware)
    # Added first = innermost: the body cap's 413 is raised where the route reads the body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(metrics.MetricsMiddleware, service=service)
    # Scrape-time Celery queue depth (only reported with REDIS_URL set); registered once per process.
    metrics.register_collector("celery_queue_depth", metrics.CeleryQueueCollector(_celery_queue_names))
    return app


DOCS_URL = "/docs"
REDOC_URL = "/redoc"
DOCS_ASSETS_URL = "/docs/assets"
# Swagger UI and ReDoc as files of a PyPI package (fastapi-offline), so the docs work with no network.
DOCS_ASSETS_PACKAGE = ("fastapi_offline", "static")


def install_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their scripts served by ``app`` itself.

    URLs are taken relative to the request's ``root_path``, so a service mounted under
    ``/services/<name>`` (the embedded default) serves working docs there too.
    """
    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[DOCS_ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + oauth2_redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters)

    async def swagger_ui_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)


def _root_path(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _celery_queue_names() -> list[str]:
    from services.common.tasks import celery_app

    conf = celery_app.conf
    names = {conf.task_default_queue, *(queue.name for queue in conf.task_queues or ())}
    return sorted(name for name in names if name)

"""Build a service's FastAPI app with the contracts every service keeps (errors, health, metrics, logs)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import health, metrics
from services.common.db import UnitOfWorkMiddleware
from services.common.errors import error_body, install_error_handlers
from services.common.logging import request_id_var
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


class RequestIdMiddleware:
    """Tag each request (and its log lines) with an id, taken from ``X-Request-ID`` when given."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")[:128]
        rid = given or uuid.uuid4().hex

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id_var.reset(token)


def create_service_app(service: str, routers: Iterable[APIRouter], *, title: str, description: str = "",
                       lifespan: Any = None, version: str = "0.1.0",
                       health_router: APIRouter | None = None) -> FastAPI:
    """A service's app; ``health_router`` replaces the default /healthz + /readyz (database, broker)."""
    settings = get_settings()
    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan)
    app.state.service_name = service
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
    app.add_middleware(RequestIdMiddleware)
    return app

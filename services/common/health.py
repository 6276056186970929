"""Liveness (/healthz) and readiness (/readyz: database and, when configured, the broker).

Both are ``async``: a sync endpoint would run on the thread pool and so wait behind whatever else
occupies it; these must answer while the service is busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.common.db import get_engine
from services.common.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database() -> str:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _check_broker(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


@router.get("/readyz")
async def readyz() -> JSONResponse:
    settings = get_settings()
    checks: dict[str, str] = {}
    ready = True
    probes = {"database": _check_database}
    if settings.redis_url:
        probes["broker"] = lambda: _check_broker(settings.redis_url or "")
    for name, probe in probes.items():
        try:
            checks[name] = await asyncio.wait_for(asyncio.to_thread(probe), timeout=5)
        except Exception as exc:  # readiness reports any failure, it never raises
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
            ready = False
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


def service_health_router(ready: Callable[[], dict[str, str]]) -> APIRouter:
    """/healthz and /readyz for a service without a database (the sandbox): ``ready`` returns its checks,
    each ``"ok"`` or the reason it is not ready; it must not block."""
    own = APIRouter(tags=["health"])
    own.add_api_route("/healthz", healthz, methods=["GET"])

    async def service_readyz() -> JSONResponse:
        checks = ready()
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    own.add_api_route("/readyz", service_readyz, methods=["GET"])
    return own

"""Liveness (/healthz) and readiness (/readyz: database and, when configured, the broker)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.common.db import get_engine
from services.common.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
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

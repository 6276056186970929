"""Liveness (/livez, /healthz) and readiness (/readyz: only what the service needs per request).

Liveness answers from the event loop itself (an ``async`` route, no thread, no I/O): a loop wedged by
blocking code cannot answer, so the probe's ``timeoutSeconds`` fails it and the kubelet restarts the
container; a busy but healthy loop answers at once. It checks no dependency: a database outage must
not restart every pod.

Readiness takes a pod out of its Service while it cannot serve. Each service checks only what its
requests need (:data:`READINESS_CHECKS`): every service but the sandbox authenticates callers with
API keys in the database; none needs Redis per request (rubric jobs answer 503 with Retry-After
themselves when the broker is down, webhook kicks fall back to the sweeper), so a Redis blip takes
no API out of rotation, where every replica would be equally unready anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.common.db import get_engine
from services.common.settings import get_settings

router = APIRouter(tags=["health"])


# Per service, the dependencies /readyz checks. A service not listed (the embedded default, tests)
# checks the database, and the broker when one is configured.
READINESS_CHECKS: dict[str, tuple[str, ...]] = {
    "gateway": ("database",),  # API keys, reward specs, idempotency claims
    "verifier": ("database",),  # API-key authentication of /v1/grade callers only
    "annotation": ("database",),
    "rubric_rm": ("database",),
    "trainer": ("database",),  # runs, datasets and their heartbeat leases
    "rec_rm": ("database",),  # catalogs, logs, behaviour models
    "retrieval": ("database",),  # corpora (indexes are rebuilt from it)
    "teacher": ("database",),  # API-key authentication
}


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The same as /livez (kept for existing probes and compose healthchecks)."""
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


def readiness_checks(service: str | None, redis_url: str | None) -> tuple[str, ...]:
    """The checks /readyz runs for ``service`` (:data:`READINESS_CHECKS`)."""
    if service in READINESS_CHECKS:
        return READINESS_CHECKS[service]
    return ("database", "broker") if redis_url else ("database",)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    settings = get_settings()
    checks: dict[str, str] = {}
    ready = True
    available: dict[str, Callable[[], str]] = {
        "database": _check_database, "broker": lambda: _check_broker(settings.redis_url or "")}
    wanted = readiness_checks(getattr(request.app.state, "service_name", None), settings.redis_url)
    probes = {name: available[name] for name in wanted}
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
    own.add_api_route("/livez", livez, methods=["GET"])
    own.add_api_route("/healthz", healthz, methods=["GET"])

    async def service_readyz() -> JSONResponse:
        checks = ready()
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks},
                            status_code=200 if ok else 503)

    own.add_api_route("/readyz", service_readyz, methods=["GET"])
    return own

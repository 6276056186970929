"""How services call each other: one HTTP client code path for both deployments.

In production a service is reached at its URL from settings (``REWARDHUB_VERIFIER_URL``...).
In the embedded default the URL is empty and the call goes through an in-process ASGI
transport to the app registered under that name, so the same request, serialisation and
error handling run either way.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.types import ASGIApp

from services.common.settings import get_settings

_LOCAL_APPS: dict[str, ASGIApp] = {}


def register_local_app(name: str, app: ASGIApp) -> None:
    """Make ``app`` reachable in-process as service ``name`` (embedded default, tests)."""
    _LOCAL_APPS[name] = app


def unregister_local_apps() -> None:
    _LOCAL_APPS.clear()


def service_base_url(name: str) -> str:
    return str(getattr(get_settings(), f"{name}_url", "") or "")


def service_client(name: str, *, timeout_s: float | None = None, headers: dict[str, str] | None = None,
                   **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for service ``name``: over the network or in-process."""
    settings = get_settings()
    timeout = httpx.Timeout(timeout_s if timeout_s is not None else settings.http_timeout_s)
    base_url = service_base_url(name)
    if base_url:
        return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, **kwargs)
    app = _LOCAL_APPS.get(name)
    if app is None:
        raise RuntimeError(
            f"service {name!r} has no URL (set REWARDHUB_{name.upper()}_URL) and is not mounted in-process")
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(base_url=f"http://{name}.local", transport=transport, timeout=timeout,
                             headers=headers, **kwargs)

"""How services call each other: one HTTP client code path for both deployments.

In production a service is reached at its URL from settings (``REWARDHUB_VERIFIER_URL``...).
In the embedded default the URL is empty and the call goes through an in-process ASGI
transport to the app registered under that name, so the same request, serialisation and
error handling run either way.

Every request a service client sends carries the current request id (``x-request-id``, from
:data:`services.common.logging.request_id_var`), so one id follows a call from the gateway through
the verifier to the sandbox or rubric_rm, and their log lines can be joined on it. It also carries
the tenant the work is done for (``X-Rewardhub-Project``, from :data:`tenant_var`, set by the route
that received the caller's key): the sandbox queues each tenant's runs apart so one cannot take
every slot. It is a fairness key, not a credential — access is decided by the caller's key.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import httpx
from starlette.types import ASGIApp

from services.common.logging import request_id_var
from services.common.settings import get_settings

_LOCAL_APPS: dict[str, ASGIApp] = {}
TENANT_HEADER = "X-Rewardhub-Project"
tenant_var: ContextVar[str | None] = ContextVar("rewardhub_tenant", default=None)


def tenant_of(key_id: str, project_ids: frozenset[str], all_projects: bool) -> str:
    """The fairness key of a caller: its one project, else its key (a key of several projects or all)."""
    if not all_projects and len(project_ids) == 1:
        return next(iter(project_ids))
    return f"key:{key_id}"


def register_local_app(name: str, app: ASGIApp) -> None:
    """Make ``app`` reachable in-process as service ``name`` (embedded default, tests)."""
    _LOCAL_APPS[name] = app


def unregister_local_apps() -> None:
    _LOCAL_APPS.clear()


def service_base_url(name: str) -> str:
    return str(getattr(get_settings(), f"{name}_url", "") or "")


async def send_request_id(request: httpx.Request) -> None:
    """httpx request hook: the id of the request being handled, read when each request is sent
    (a client may outlive the request that made it)."""
    request_id = request_id_var.get()
    if request_id:
        request.headers["x-request-id"] = request_id
    tenant = tenant_var.get()
    if tenant and TENANT_HEADER not in request.headers:
        request.headers[TENANT_HEADER] = tenant


def _with_request_id_hook(kwargs: dict[str, Any]) -> dict[str, Any]:
    hooks = dict(kwargs.pop("event_hooks", None) or {})
    hooks["request"] = [send_request_id, *hooks.get("request", [])]
    return {**kwargs, "event_hooks": hooks}


def service_client(name: str, *, timeout_s: float | None = None, headers: dict[str, str] | None = None,
                   **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for service ``name``: over the network or in-process."""
    kwargs = _with_request_id_hook(kwargs)
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

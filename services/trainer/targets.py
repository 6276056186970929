"""Where a service run's worker reaches the platform's other services, and with which credential.

A run started through the API never chooses a host or a credential of its own (services/trainer/confine.py):

- **rewards** (``reward.url``): the allowlisted URL, else the platform's gateway (worker.py's ``_reward_target``);
- **annotation** (``rlavr.url``, RLAVR steps): the allowlisted URL, else the platform's annotation service —
  ``REWARDHUB_ANNOTATION_URL``, else its mount under the gateway's URL (``/services/annotation``, the
  embedded platform served over HTTP), else the platform's apps mounted in this process;
- **sandbox** (``multi_turn`` tool sessions): always the platform's sandbox — ``REWARDHUB_SANDBOX_URL``, else
  ``<gateway>/services/sandbox``, else in this process — with the service's ``REWARDHUB_SANDBOX_TOKEN``;
- **teacher** (``self_distillation`` with ``teacher.backend: http``): the allowlisted ``teacher.url``, else the
  platform's teacher service — ``REWARDHUB_TEACHER_URL``, else ``<gateway>/services/teacher``, else in this
  process.

Rewards, annotation and the teacher are sent the run's minted key (role trainer, its project only); the sandbox gets
the sandbox token, which grants nothing but sandbox runs, and the run's project as ``X-Rewardhub-Project``
(its per-project session caps).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import httpx

from services.common.settings import Settings, get_settings
from services.trainer.confine import ANNOTATION_MOUNT, TEACHER_MOUNT

SANDBOX_MOUNT = "/services/sandbox"
IN_PROCESS_BASE = "http://gateway.local"


@functools.lru_cache(maxsize=1)
def platform_app() -> Any:
    """The platform's apps mounted in this process (built once per worker)."""
    from services.common.platform import build_platform_app

    return build_platform_app()


class SyncASGITransport(httpx.BaseTransport):
    """A synchronous httpx transport to an ASGI app in this process.

    The app runs on one event loop of its own (a daemon thread) for the transport's whole life, so
    what it starts in the background (the sandbox's session sweeper) keeps running between requests.
    Bodies are passed raw (``aiter_raw``), so a content-encoding is decoded once, by the caller's client.
    ``close`` is a no-op: a caller that opens an ``httpx.Client`` per request (trainer.rlavr) closes
    the transport each time, and the next request must still be served; :meth:`shutdown` ends the loop.
    """

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="rewardhub-asgi")
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        content = request.read()

        async def send() -> tuple[int, list[tuple[str, str]], bytes]:
            forwarded = httpx.Request(request.method, request.url, headers=request.headers, content=content)
            response = await self._inner.handle_async_request(forwarded)
            body = b"".join([chunk async for chunk in response.aiter_raw()])
            await response.aclose()
            return response.status_code, response.headers.multi_items(), body

        if not self._loop.is_running():
            raise httpx.ConnectError("the in-process platform's event loop has been shut down", request=request)
        status, headers, body = asyncio.run_coroutine_threadsafe(send(), self._loop).result()
        return httpx.Response(status, headers=headers, content=body, request=request)

    def close(self) -> None:
        """Kept open: see the class docstring."""

    def shutdown(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def platform_base(own_url: str, mount: str, settings: Settings | None = None) -> str | None:
    """A platform service's base URL: its own setting, else its mount under the gateway; None: in-process."""
    settings = settings or get_settings()
    if own_url:
        return own_url.rstrip("/")
    if settings.gateway_url:
        return settings.gateway_url.rstrip("/") + mount
    return None


def annotation_target(url: str | None, settings: Settings | None = None
                      ) -> tuple[str, httpx.BaseTransport | None]:
    """(base URL, transport) of the annotation service an RLAVR run posts its steps to.

    ``url`` is the config's ``rlavr.url``, already checked against the allowlist
    (:func:`services.trainer.confine.check_annotation_url`).
    """
    if url:
        return url.rstrip("/"), None
    settings = settings or get_settings()
    base = platform_base(settings.annotation_url, ANNOTATION_MOUNT, settings)
    if base is not None:
        return base, None
    return IN_PROCESS_BASE + ANNOTATION_MOUNT, SyncASGITransport(platform_app())


def teacher_target(url: str | None, settings: Settings | None = None) -> tuple[str, httpx.BaseTransport | None]:
    """(base URL, transport) of the teacher service a self-distillation run scores, reflects and pushes to.

    ``url`` is the config's ``self_distillation.teacher.url``, already checked against the allowlist
    (:func:`services.trainer.confine.check_teacher_url`).
    """
    if url:
        return url.rstrip("/"), None
    settings = settings or get_settings()
    base = platform_base(settings.teacher_url, TEACHER_MOUNT, settings)
    if base is not None:
        return base, None
    return IN_PROCESS_BASE + TEACHER_MOUNT, SyncASGITransport(platform_app())


def http_teacher(teacher: Any, api_key: str, run_id: str, settings: Settings | None = None) -> Any:
    """A service run's :class:`trainer.self_distillation.teacher.HttpTeacher`: the platform's (or allowlisted)
    teacher service, the run's minted key, ``run_id`` in each weights push's Idempotency-Key.

    ``teacher`` is a service :class:`~trainer.self_distillation.config.ServiceTeacherConfig` (no key variable).
    """
    from trainer.self_distillation.teacher import HttpTeacher

    if teacher.backend != "http":
        raise ValueError(f"config.self_distillation.teacher.backend: {teacher.backend!r} has no teacher service")
    base_url, transport = teacher_target(teacher.url, settings)
    return HttpTeacher(teacher, base_url=base_url, api_key=api_key, run_id=run_id, transport=transport)


def sandbox_tool(tools: Any, project_id: str, settings: Settings | None = None) -> Any:
    """The tool backend of a service run's ``multi_turn`` section: the platform's sandbox sessions.

    ``tools`` is a service :class:`trainer.config.ToolsConfig` (backend ``sandbox``, no URL, no token
    variable); the URL and the token are this service's settings, the project the run's own.
    """
    from trainer.agent.tools import SandboxSessionTool

    settings = settings or get_settings()
    if tools.backend != "sandbox":  # the config refuses it; checked again where code would run
        raise ValueError(f"config.multi_turn.tools.backend: {tools.backend!r} is not accepted for a service run")
    base = platform_base(settings.sandbox_url, SANDBOX_MOUNT, settings)
    transport = None if base is not None else SyncASGITransport(platform_app())
    return SandboxSessionTool(base or IN_PROCESS_BASE + SANDBOX_MOUNT, settings.sandbox_token or None,
                              ttl_s=tools.ttl_s, timeout_s=tools.timeout_s, max_output_bytes=tools.max_output_bytes,
                              transport=transport, project=project_id)

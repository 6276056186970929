"""Sandbox service: SandboxFusion-compatible `/run_code`, rewardhub's `/v1/tests` and tool sessions
(`/v1/sessions`), each run and each session its own sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from services.common.app_factory import create_service_app
from services.common.errors import InvalidInput
from services.common.health import service_health_router
from services.common.sandbox_api import (
    RunCodeRequest,
    RunCodeResponse,
    SandboxTestsRequest,
    SandboxTestsResponse,
)
from services.common.settings import get_settings
from services.sandbox import languages, routes_sessions, run_code, runner, testing
from services.sandbox.deps import Caller, CallerProject, SandboxSettings
from services.sandbox.sessions import SessionRegistry

router = APIRouter(tags=["sandbox"])


@router.post("/run_code", response_model=RunCodeResponse)
async def run_code_route(body: RunCodeRequest, _caller: Caller, settings: SandboxSettings,
                         project: CallerProject = None) -> RunCodeResponse:
    """Run one program (SandboxFusion's request and response fields and statuses)."""
    return await run_code.run_code(body, settings, project=project)


@router.post("/v1/tests", response_model=SandboxTestsResponse)
async def tests_route(body: SandboxTestsRequest, _caller: Caller, settings: SandboxSettings,
                      project: CallerProject = None) -> SandboxTestsResponse:
    """Run a Python solution against its tests; each test's verdict is decided outside the tested code."""
    try:
        return await testing.run_tests(body, settings, project=project)
    except testing.InvalidTest as exc:
        raise InvalidInput(str(exc), field=f"tests.{exc.index}.source") from exc


@router.get("/v1/info")
async def info(_caller: Caller, settings: SandboxSettings) -> dict[str, object]:
    """How runs are isolated on this host, and which languages it has."""
    cap = runner.capability(settings)
    return {"isolation": settings.sandbox_isolation, "namespaces_available": cap.namespaces, "detail": cap.detail,
            "seccomp": cap.seccomp, "languages": languages.available(settings.sandbox_python),
            "max_concurrent_runs": runner.max_concurrent_runs(settings),
            "max_runs_per_project": runner.runs_per_project(settings),
            "max_sessions": settings.sandbox_max_sessions,
            "max_sessions_per_project": settings.sandbox_max_sessions_per_project}


def _readiness() -> dict[str, str]:
    settings = get_settings()
    if settings.sandbox_isolation == "processes":
        return {"isolation": "ok"}
    cap = runner.capability(settings)  # probed once, then cached: readiness never waits on runs
    # The probe ran a real run under the seccomp filters: it is "ok" only when they were in force.
    return {"isolation": "ok" if cap.namespaces else cap.detail,
            "seccomp": "ok" if cap.namespaces else f"not verified: {cap.detail}"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Sweep idle sessions while the service is up; on shutdown kill every session. (Mounted in the
    embedded platform there is no lifespan: the first session starts the sweeper, and the sessions
    die with the process.)"""
    registry: SessionRegistry = app.state.sessions
    registry.ensure_sweeper(get_settings())
    try:
        yield
    finally:
        await registry.shutdown()


def create_app() -> FastAPI:
    runner.capability()  # probe at start-up, not on the first run
    app = create_service_app("sandbox", [router, routes_sessions.router], title="rewardhub sandbox",
                             description="Runs untrusted code: a process and its own namespaces per run, "
                             "and per tool session.", lifespan=lifespan,
                             health_router=service_health_router(_readiness))
    app.state.sessions = SessionRegistry()
    return app

"""Sandbox service: SandboxFusion-compatible `/run_code` and rewardhub's `/v1/tests`, each run its own sandbox."""

from __future__ import annotations

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
from services.sandbox import languages, run_code, runner, testing
from services.sandbox.deps import Caller, CallerProject, SandboxSettings

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
            "max_runs_per_project": runner.runs_per_project(settings)}


def _readiness() -> dict[str, str]:
    settings = get_settings()
    if settings.sandbox_isolation == "processes":
        return {"isolation": "ok"}
    cap = runner.capability(settings)  # probed once, then cached: readiness never waits on runs
    # The probe ran a real run under the seccomp filters: it is "ok" only when they were in force.
    return {"isolation": "ok" if cap.namespaces else cap.detail,
            "seccomp": "ok" if cap.namespaces else f"not verified: {cap.detail}"}


def create_app() -> FastAPI:
    runner.capability()  # probe at start-up, not on the first run
    return create_service_app("sandbox", [router], title="rewardhub sandbox",
                              description="Runs untrusted code: a process and its own namespaces per run.",
                              health_router=service_health_router(_readiness))

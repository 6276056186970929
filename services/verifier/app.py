"""Verifier routes: batch grading for the gateway and a SandboxFusion-compatible `/run_code`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from services.common.app_factory import create_service_app
from services.common.reward_api import GradeRequest, GradeResponse, merge, screen, summarise
from services.common.sandbox_api import RunCodeRequest, RunCodeResponse
from services.verifier import grading, run_code
from services.verifier.deps import CodeRunner, GradingCaller

router = APIRouter(tags=["verifier"])


@router.post("/v1/grade", response_model=GradeResponse,
             responses={200: {"content": {"application/x-ndjson": {}}}})
async def grade(body: GradeRequest, request: Request, _principal: GradingCaller) -> Response:
    """Grade a batch against a resolved spec (the gateway's `/v1/rewards` forwards here)."""
    # Graders that call other services (rubric) do so with the caller's key and project scope.
    auth = request.headers.get("authorization")
    # An item that cannot be graded (NUL, lone surrogate, oversized, too deep, NaN) is its own
    # invalid_input result; the rest of the batch is graded as usual.
    gradable, invalid = screen(body.items)
    for result in invalid.values():
        grading.observe(body.spec, result)
    if body.stream:
        async def lines() -> AsyncIterator[bytes]:
            for result in invalid.values():
                yield (result.model_dump_json() + "\n").encode()
            if gradable:
                async for result in grading.grade_stream(body.spec, gradable, body.deadline_s, auth):
                    yield (result.model_dump_json() + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    started = time.perf_counter()
    graded = await grading.grade_batch(body.spec, gradable, body.deadline_s, auth) if gradable else []
    results = merge(body.items, invalid, graded)
    response = GradeResponse(results=results, summary=summarise(results),
                             elapsed_ms=round((time.perf_counter() - started) * 1000, 3))
    return Response(json.dumps(response.model_dump(mode="json")), media_type="application/json")


@router.post("/run_code", response_model=RunCodeResponse, tags=["sandbox"])
async def sandbox_run_code(body: RunCodeRequest, _principal: CodeRunner) -> dict[str, object]:
    """SandboxFusion-compatible code execution, run by the sandbox service (user-code failures are
    `Failed`, platform faults `SandboxError`)."""
    return await run_code.forward_run_code(body.model_dump(mode="json"))


def create_app() -> FastAPI:
    return create_service_app("verifier", [router], title="rewardhub verifier",
                              description="Deterministic graders on a supervised process pool; code runs in the sandbox service.")

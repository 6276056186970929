"""Grade a Python solution against tests, with verdicts the solution cannot write.

All of one request's tests run in one sandbox (one start-up), each in a fresh interpreter, so a
test that crashes, exits or loops takes only itself down. Assert tests are decided by the
supervisor from probe values (``asserts.py``); stdio tests are decided here, by comparing the
program's stdout with the expected output, which never enters the sandbox.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from services.common.sandbox_api import (
    SandboxTest,
    SandboxTestOutcome,
    SandboxTestsRequest,
    SandboxTestsResponse,
)
from services.common.settings import Settings, get_settings
from services.sandbox import asserts, runner

SOLUTION_FILE = "solution.py"
EXCERPT_CHARS = 500
MAX_TEST_OUTPUT_BYTES = 256 * 1024  # a stdio case whose output is longer fails as "output exceeded the cap"


class InvalidTest(ValueError):
    """A test cannot be run as given; ``index`` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"tests[{index}]: {message}")
        self.index = index


def outputs_match(actual: str, expected: str) -> bool:
    """Stripped stdout compared line by line, trailing whitespace of each line ignored."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(actual) == lines(expected)


def build_job(req: SandboxTestsRequest, settings: Settings) -> dict[str, Any]:
    tests: list[dict[str, Any]] = []
    for index, test in enumerate(req.tests):
        if test.kind == "stdio":
            tests.append({"kind": "stdio", "stdin": test.stdin})
            continue
        try:
            rewritten = asserts.rewrite(test.source or "", req.code)
        except asserts.InvalidTestSource as exc:
            raise InvalidTest(index, str(exc)) from exc
        tests.append({"kind": "assert", "program": rewritten.program, "sites": rewritten.sites})
    limits = runner.limits_for(settings, timeout_s=req.timeout_s, memory_mb=req.memory_mb)
    return {"mode": "tests", "python": runner.require_python(settings), "tests": tests,
            "limits": limits.as_job(), "timeout_s": req.timeout_s, "budget_s": _budget(req),
            # Per test and stream: all of a request's tests travel back in one result, which is capped.
            "output_bytes": min(settings.sandbox_max_output_bytes, MAX_TEST_OUTPUT_BYTES),
            "files": {SOLUTION_FILE: base64.b64encode(req.code.encode()).decode()}}


def _budget(req: SandboxTestsRequest) -> float:
    return req.budget_s if req.budget_s is not None else req.timeout_s * len(req.tests)


async def run_tests(req: SandboxTestsRequest, settings: Settings | None = None, *,
                    project: str | None = None) -> SandboxTestsResponse:
    settings = settings or get_settings()
    started = time.monotonic()
    isolation = settings.sandbox_isolation
    try:
        job = build_job(req, settings)
    except runner.SandboxUnavailable as exc:
        return SandboxTestsResponse(tests=[], fault=str(exc), isolation=isolation, wall_s=0.0)
    # The whole budget, plus one test's time: the last test may start just before the budget ends.
    result = await runner.execute(job, limit_s=_budget(req) + req.timeout_s, settings=settings, project=project)
    wall_s = round(time.monotonic() - started, 6)
    if result.fault is not None:
        return SandboxTestsResponse(tests=[], fault=result.fault, isolation=isolation, wall_s=wall_s)
    outcomes = [_outcome(test, reported) for test, reported in zip(req.tests, result.data["tests"], strict=True)]
    return SandboxTestsResponse(tests=outcomes, isolation=isolation, wall_s=wall_s)


def _outcome(test: SandboxTest, reported: dict[str, Any]) -> SandboxTestOutcome:
    status = reported["status"]
    if status == "not_run":
        return SandboxTestOutcome(status="not_run")
    stdout, stderr = runner.decoded(reported, "stdout"), runner.decoded(reported, "stderr")
    reason = reported.get("reason")
    if test.kind == "stdio" and status == "finished":
        status, reason = _stdio_verdict(test, reported, stdout, stderr)
    elif status == "error" and not reason:
        reason = _last_line(stderr)
    if status == "failed" and reported.get("exit_code") not in (0, None) and stderr.strip():
        reason = f"{reason}: {_last_line(stderr)}" if reason else _last_line(stderr)
    return SandboxTestOutcome(status=status, reason=reason, wall_s=reported.get("wall_s"),
                       stdout=stdout[:EXCERPT_CHARS] or None, stderr=stderr[-EXCERPT_CHARS:] or None)


def _stdio_verdict(test: SandboxTest, reported: dict[str, Any], stdout: str, stderr: str) -> tuple[str, str | None]:
    if reported["exit_code"] != 0:
        return "failed", f"exited with code {reported['exit_code']}: {_last_line(stderr)}"
    if reported.get("truncated"):
        return "failed", "output exceeded the cap"
    if outputs_match(stdout, test.expected_stdout or ""):
        return "passed", None
    return "failed", f"wrong output {stdout.strip()[:120]!r}, expected {str(test.expected_stdout).strip()[:120]!r}"


def _last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")[:300]

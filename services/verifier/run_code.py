"""SandboxFusion-compatible ``POST /run_code``: run one Python program in the sandbox.

Request and response follow SandboxFusion's field names so its clients (and RL frameworks that
speak to it) work unchanged. Python only; ``compile_timeout`` is accepted and unused (Python has
no compile step). User-code failures (non-zero exit, time limit, memory) answer ``Failed``;
only platform faults answer ``SandboxError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from services.common.settings import get_settings
from services.verifier.sandbox import SandboxResult, run_python

SUPPORTED_LANGUAGES = ("python", "python3")
MAX_CODE_CHARS = 1_000_000


class RunCodeRequest(BaseModel):
    code: str = Field(max_length=MAX_CODE_CHARS)
    language: Literal["python", "python3"] = Field(
        description=f"Programming language; supported: {', '.join(SUPPORTED_LANGUAGES)}.")
    compile_timeout: float = Field(default=10.0, gt=0, le=60, description="Accepted for compatibility; unused.")
    run_timeout: float | None = Field(default=None, gt=0, le=60,
                                      description="Wall-clock seconds; unset: the service's sandbox_timeout_s.")
    memory_limit_MB: int = Field(default=-1, description="-1: the service's sandbox_memory_mb; else 32..8192.")
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict, description="File name -> base64 content.")
    fetch_files: list[str] = Field(default_factory=list, description="Files to return (base64) after the run.")

    @field_validator("memory_limit_MB")
    @classmethod
    def _memory_range(cls, value: int) -> int:
        if value != -1 and not 32 <= value <= 8192:
            raise ValueError("must be -1 (service default) or between 32 and 8192")
        return value

    @field_validator("files")
    @classmethod
    def _base64(cls, files: dict[str, str | None]) -> dict[str, str | None]:
        for name, content in files.items():
            if content is None:
                continue
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"files[{name!r}] is not valid base64: {exc}") from exc
        return files


RunStatus = Literal["Finished", "TimeLimitExceeded", "Error"]


class CommandRunResult(BaseModel):
    status: RunStatus
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


async def run_code(req: RunCodeRequest) -> RunCodeResponse:
    """Run the request's program in a worker thread (the sandbox blocks on the child)."""
    settings = get_settings()
    timeout_s = req.run_timeout if req.run_timeout is not None else settings.sandbox_timeout_s
    memory_mb = req.memory_limit_MB if req.memory_limit_MB != -1 else settings.sandbox_memory_mb
    files: dict[str, str | bytes] = {name: base64.b64decode(content or "") for name, content in req.files.items()}
    result = await asyncio.to_thread(run_python, req.code, stdin=req.stdin or "", timeout_s=timeout_s,
                                     memory_mb=memory_mb, files=files, fetch_files=req.fetch_files)
    return to_response(result)


def to_response(result: SandboxResult) -> RunCodeResponse:
    """Map a sandbox result onto SandboxFusion's statuses."""
    pod = socket.gethostname()
    if result.status == "sandbox_error":
        return RunCodeResponse(status="SandboxError", message=result.stderr, executor_pod_name=pod,
                               run_result=CommandRunResult(status="Error", execution_time=result.wall_s))
    run_status: RunStatus = "TimeLimitExceeded" if result.status == "timeout" else "Finished"
    run_result = CommandRunResult(status=run_status, execution_time=round(result.wall_s, 6),
                                  return_code=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    fetched = {name: base64.b64encode(content).decode() for name, content in result.files.items()}
    if result.status == "success":
        return RunCodeResponse(status="Success", run_result=run_result, executor_pod_name=pod, files=fetched)
    message = {"timeout": "time limit exceeded", "memory_exceeded": "memory limit exceeded",
               "runtime_error": f"program exited with code {result.exit_code}"}[result.status]
    if result.truncated:
        message += " (output truncated)"
    return RunCodeResponse(status="Failed", message=message, run_result=run_result, executor_pod_name=pod,
                           files=fetched)

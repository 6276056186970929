"""The sandbox service's wire contract (shared: the verifier and the trainer call it).

``/run_code`` keeps SandboxFusion's field names and statuses so its clients (veRL's sandbox
client, the ``sandbox-fusion`` package) work unchanged; ``/v1/tests`` is rewardhub's own: a
solution and its tests in, one outcome per test out.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CODE_CHARS = 1_000_000
MAX_TESTS = 200
MAX_STDIN_CHARS = 16_000_000


class RunCodeRequest(BaseModel):
    code: str = Field(max_length=MAX_CODE_CHARS)
    language: str = Field(default="python", max_length=64, description=(
        "python, cpp, nodejs or bash (aliases: python3, c++, javascript, sh). Another language is a "
        "`Failed` run naming the supported ones."))
    compile_timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds of wall time for compiling.")
    run_timeout: float | None = Field(default=None, gt=0, le=120,
                                      description="Seconds of wall time for running; unset: REWARDHUB_SANDBOX_TIMEOUT_S.")
    memory_limit_MB: int = Field(default=-1, description="-1: REWARDHUB_SANDBOX_MEMORY_MB; else 32..8192.")
    stdin: str | None = Field(default=None, max_length=MAX_STDIN_CHARS)
    files: dict[str, str | None] = Field(default_factory=dict, max_length=256,
                                         description=("File name (relative to the work dir) -> base64 content; "
                                                      "null content, or a name containing IGNORE_THIS_FILE: "
                                                      "not written (as SandboxFusion)."))
    fetch_files: list[str] = Field(default_factory=list, max_length=256,
                                   description=("Files to return (base64) after the run: relative to the work dir, or "
                                                "absolute inside the sandbox; one that is missing is left out of "
                                                "`files` and named in `message`."))

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
    truncated: bool = Field(default=False, description="Output past REWARDHUB_SANDBOX_MAX_OUTPUT_BYTES was dropped.")


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


class SandboxTest(BaseModel):
    """One test: Python source whose ``assert`` statements must hold, or stdin -> expected stdout."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["assert", "stdio"]
    source: str | None = Field(default=None, max_length=MAX_CODE_CHARS, description="kind=assert: the test code.")
    stdin: str = Field(default="", max_length=MAX_STDIN_CHARS)
    expected_stdout: str | None = Field(default=None, max_length=MAX_STDIN_CHARS)

    @model_validator(mode="after")
    def _complete(self) -> SandboxTest:
        if self.kind == "assert" and not (self.source or "").strip():
            raise ValueError("an assert test needs its source")
        if self.kind == "stdio" and self.expected_stdout is None:
            raise ValueError("a stdio test needs expected_stdout")
        return self


class SandboxTestsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=MAX_CODE_CHARS, description="The Python solution.")
    tests: list[SandboxTest] = Field(min_length=1, max_length=MAX_TESTS)
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Wall time of each test.")
    memory_mb: int = Field(default=512, ge=32, le=8192)
    budget_s: float | None = Field(default=None, gt=0, le=3600,
                                   description="Time for all tests; tests not started by then are `not_run`.")


SandboxTestStatus = Literal["passed", "failed", "timeout", "memory_exceeded", "error", "not_run"]


class SandboxTestOutcome(BaseModel):
    status: SandboxTestStatus
    reason: str | None = None
    wall_s: float | None = None
    stdout: str | None = Field(default=None, description="The start of what the test printed.")
    stderr: str | None = Field(default=None, description="The end of its stderr.")


class SandboxTestsResponse(BaseModel):
    tests: list[SandboxTestOutcome]
    fault: str | None = Field(default=None, description="The sandbox itself failed: no test was decided.")
    isolation: str
    wall_s: float


# --- stateful tool sessions (/v1/sessions): one persistent interpreter per trajectory ----------------

SessionExecuteStatus = Literal["success", "timeout", "runtime_error"]
SessionState = Literal["live", "ended"]
# Why a session ended: closed (DELETE), expired (idle past its ttl_s), timeout (an execute ran past
# its timeout_s), memory_exceeded, cpu_limit (its whole-life CPU seconds), exited (its interpreter
# died: os._exit, a signal), protocol_error (its interpreter garbled the answer pipe), error (the
# sandbox itself failed), shutdown (the service stopped).
SessionEndedReason = Literal["closed", "expired", "timeout", "memory_exceeded", "cpu_limit", "exited",
                             "protocol_error", "error", "shutdown"]


class SessionCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Literal["python"] = Field(default="python", description="Only python.")
    ttl_s: int = Field(default=600, gt=0, description=(
        "Idle seconds after which the session is reaped (each execute starts the count again); at most "
        "REWARDHUB_SANDBOX_SESSION_MAX_TTL_S."))
    memory_mb: int | None = Field(default=None, ge=32, le=8192, description=(
        "The session's memory limit, as a one-shot run's; null: REWARDHUB_SANDBOX_MEMORY_MB."))


class SessionCreated(BaseModel):
    session_id: str
    language: Literal["python"]
    ttl_s: int
    created_at: datetime
    expires_at: datetime


class SessionExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=MAX_CODE_CHARS, description="Python run in the session's persistent namespace.")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description=(
        "Wall seconds; past them the session is killed and ended (reason timeout)."))
    max_output_bytes: int = Field(default=65536, ge=1, le=16 * 1024 * 1024, description=(
        "Bytes kept of each of stdout and stderr (the rest dropped, truncated: true); at most "
        "REWARDHUB_SANDBOX_MAX_OUTPUT_BYTES."))


class SessionExecuteResponse(BaseModel):
    status: SessionExecuteStatus
    stdout: str
    stderr: str = Field(description="runtime_error: ends with the uncaught exception's traceback.")
    truncated: bool
    execution_count: int = Field(description="Executes of this session so far, this one included.")
    duration_s: float


class SessionInfo(BaseModel):
    session_id: str
    state: SessionState
    ended_reason: SessionEndedReason | None
    execution_count: int
    last_used_at: datetime
    expires_at: datetime = Field(description=(
        "When the session is reaped if it stays idle (for an ended one: when it would have been)."))

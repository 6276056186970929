"""Stateful Python tool sessions for code environments: the sandbox service over HTTP, and a local
in-process test double.

A session is a persistent per-trajectory Python namespace: ``execute(code)`` runs in the state the
earlier calls left. Both backends answer a :class:`ToolResult` with the sandbox's statuses
(``success``, ``timeout``, ``runtime_error``) and ``error`` when the tool itself failed (service
unreachable, session gone); a tool failure is an observation and a counted ``tool_errors``, never
an exception out of the rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
SANDBOX_MOUNT = "/services/sandbox"


@dataclass(frozen=True)
class ToolResult:
    status: str  # success | timeout | runtime_error | error (the tool itself failed)
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    duration_s: float = 0.0


class ToolSession(Protocol):
    def execute(self, code: str) -> ToolResult:
        ...

    def close(self) -> None:
        ...


class ToolBackend(Protocol):
    def open(self) -> ToolSession:
        """A new session (lazily started by the backend where it can be)."""
        ...


def _cut(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore"), True


# ---------------------------------------------------------------- local test double

_REPL = r"""
import contextlib, io, json, sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    request = json.loads(line)
    if request.get("reset"):  # the session ended: a fresh namespace for the next one
        namespace = {"__name__": "__main__"}
        sys.__stdout__.write("{}\n")
        sys.__stdout__.flush()
        continue
    out, err = io.StringIO(), io.StringIO()
    status = "success"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(request["code"], "<cell>", "exec"), namespace)
        except BaseException:
            status = "runtime_error"
            traceback.print_exc(limit=-1)
    sys.__stdout__.write(json.dumps({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    sys.__stdout__.flush()
"""


class LocalPythonSession:
    """TEST DOUBLE / CPU toy backend: a persistent ``python`` subprocess holding one namespace,
    started on the first call. No isolation beyond a separate process: for unit tests and the CPU
    benchmark only, never for untrusted code (use the sandbox service). A call that runs past
    ``timeout_s`` kills the process: it answers ``timeout`` and the next call starts an empty
    namespace (the sandbox keeps the session; this double cannot)."""

    def __init__(self, timeout_s: float = 5.0, max_output_bytes: int = 4096,
                 pool: list[subprocess.Popen[str]] | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._proc: subprocess.Popen[str] | None = None
        self._pool = pool  # the backend's idle interpreters, reset between sessions

    def _start(self) -> subprocess.Popen[str]:
        while self._proc is None and self._pool:
            candidate = self._pool.pop()
            if candidate.poll() is None:
                self._proc = candidate
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-u", "-c", _REPL], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                          env={"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"})
        return self._proc

    def execute(self, code: str) -> ToolResult:
        started = time.perf_counter()
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps({"code": code}) + "\n")
            proc.stdin.flush()
        except OSError as exc:
            self._kill()
            return ToolResult("error", stderr=f"local python session died: {exc}")
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        if not ready:
            self._kill()
            return ToolResult("timeout", stderr=f"timed out after {self.timeout_s} s",
                              duration_s=time.perf_counter() - started)
        line = proc.stdout.readline()
        if not line:
            self._kill()
            return ToolResult("error", stderr="local python session exited", duration_s=time.perf_counter() - started)
        answer = json.loads(line)
        stdout, cut_out = _cut(answer["stdout"], self.max_output_bytes)
        stderr, cut_err = _cut(answer["stderr"], self.max_output_bytes)
        return ToolResult(answer["status"], stdout, stderr, cut_out or cut_err, time.perf_counter() - started)

    def close(self) -> None:
        if self._proc is not None and self._pool is not None and self._reset():
            self._pool.append(self._proc)
            self._proc = None
            return
        self._kill()

    def _reset(self) -> bool:
        """Empty the interpreter's namespace for reuse; False if it does not answer at once."""
        proc = self._proc
        if proc is None or proc.poll() is not None or proc.stdin is None or proc.stdout is None:
            return False
        try:
            proc.stdin.write('{"reset": true}\n')
            proc.stdin.flush()
        except OSError:
            return False
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        return bool(ready) and proc.stdout.readline().strip() == "{}"

    def _adopt(self, proc: subprocess.Popen[str]) -> LocalPythonSession:
        self._proc = proc
        return self

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None


class LocalPythonTool:
    """TEST DOUBLE backend: a :class:`LocalPythonSession` per trajectory; a closed session's
    interpreter is emptied and kept for the next one (no start-up per episode)."""

    def __init__(self, timeout_s: float = 5.0, max_output_bytes: int = 4096) -> None:
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self._idle: list[subprocess.Popen[str]] = []

    def open(self) -> LocalPythonSession:
        return LocalPythonSession(self.timeout_s, self.max_output_bytes, pool=self._idle)

    def close(self) -> None:
        """End the idle interpreters."""
        while self._idle:
            LocalPythonSession(pool=None)._adopt(self._idle.pop())._kill()


# ---------------------------------------------------------------- the sandbox service


def sandbox_base_url(url: str | None = None) -> str:
    """The sandbox service's base URL: ``url`` as given (a sandbox service's own address, or a
    platform URL ending in ``/services/sandbox``), else ``REWARDHUB_URL`` (default
    http://127.0.0.1:8000) + ``/services/sandbox``, its mount in the embedded platform."""
    if url:
        return url.rstrip("/")
    return os.environ.get("REWARDHUB_URL", DEFAULT_URL).rstrip("/") + SANDBOX_MOUNT


class SandboxSession:
    """One ``/v1/sessions`` session of the sandbox service, created on the first call and deleted
    by :meth:`close`. A session that is gone (404 ``session_not_found``, 409 ``session_ended``:
    reaped, TTL) or a refused create (429 ``sessions_exhausted``) answers ``error`` with the code."""

    def __init__(self, client: httpx.Client, *, ttl_s: float, timeout_s: float, max_output_bytes: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_output_bytes = max_output_bytes
        self.session_id: str | None = None

    @staticmethod
    def _failure(response: httpx.Response) -> ToolResult:
        try:
            error = response.json().get("error", {})
            code, message = error.get("code", ""), error.get("message", "")
        except (ValueError, AttributeError):
            code, message = "", response.text[:200]
        return ToolResult("error", stderr=f"sandbox {response.status_code} {code}: {message}".strip())

    def execute(self, code: str) -> ToolResult:
        started = time.perf_counter()
        try:
            if self.session_id is None:
                created = self.client.post("/v1/sessions", json={"language": "python", "ttl_s": self.ttl_s})
                if created.status_code != 201:
                    return self._failure(created)
                self.session_id = str(created.json()["session_id"])
            answer = self.client.post(f"/v1/sessions/{self.session_id}/execute",
                                      json={"code": code, "timeout_s": self.timeout_s,
                                            "max_output_bytes": self.max_output_bytes})
        except httpx.HTTPError as exc:
            return ToolResult("error", stderr=f"sandbox unreachable: {type(exc).__name__}: {exc}")
        if answer.status_code != 200:
            if answer.status_code in (404, 409):
                self.session_id = None  # gone: the next call opens a new one
            return self._failure(answer)
        body: dict[str, Any] = answer.json()
        return ToolResult(str(body.get("status", "error")), str(body.get("stdout", "")), str(body.get("stderr", "")),
                          bool(body.get("truncated", False)),
                          float(body.get("duration_s", time.perf_counter() - started)))

    def close(self) -> None:
        if self.session_id is None:
            return
        with contextlib.suppress(httpx.HTTPError):  # else the service reaps it at its TTL
            self.client.delete(f"/v1/sessions/{self.session_id}")
        self.session_id = None


PROJECT_HEADER = "X-Rewardhub-Project"  # the sandbox's per-project session caps and ownership key on it


class SandboxSessionTool:
    """Sessions of the sandbox service over HTTP (``Authorization: Bearer <api_key>``), one per
    trajectory, all through one pooled client. ``project`` is sent as ``X-Rewardhub-Project`` on
    every request: the sandbox counts its per-project session cap and session ownership by it (without
    it every run shares the one anonymous bucket)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, ttl_s: float = 600.0,
                 timeout_s: float = 5.0, max_output_bytes: int = 4096, request_timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None, project: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if project:
            headers[PROJECT_HEADER] = project
        self.client = httpx.Client(base_url=sandbox_base_url(base_url), headers=headers,
                                   timeout=request_timeout_s, transport=transport)
        self.ttl_s, self.timeout_s, self.max_output_bytes = ttl_s, timeout_s, max_output_bytes

    def open(self) -> SandboxSession:
        return SandboxSession(self.client, ttl_s=self.ttl_s, timeout_s=self.timeout_s,
                              max_output_bytes=self.max_output_bytes)

    def close(self) -> None:
        self.client.close()

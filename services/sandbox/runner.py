"""Start one sandboxed run and collect its result: a process per run, never a thread.

The service's event loop only waits on pipes, so health checks and other requests are answered
while any number of runs execute; ``REWARDHUB_SANDBOX_MAX_CONCURRENT_RUNS`` bounds how many run
at once (the rest queue, and their time limits start when they start). A run that overstays its
limits plus a grace period is ended by killing its ``bwrap``, which takes the run's PID namespace,
and so every process of the run, with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from services.common.settings import Settings, get_settings
from services.sandbox import isolation

GRACE_S = 10.0  # start-up and teardown beyond a run's own limits before the service kills it
MAX_RESULT_BYTES = 128 * 1024 * 1024


class SandboxUnavailable(RuntimeError):
    """This host cannot run code with the configured isolation (the message says why)."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int
    memory_mb: int
    address_space_mb: int
    file_mb: int = 16
    processes: int = 64
    open_files: int = 256

    def as_job(self) -> dict[str, int]:
        return {"cpu_s": self.cpu_s, "memory_mb": self.memory_mb, "address_space_mb": self.address_space_mb,
                "file_mb": self.file_mb, "processes": self.processes, "open_files": self.open_files}


def limits_for(settings: Settings, *, timeout_s: float, memory_mb: int, address_space: bool = True) -> Limits:
    """Per-run limits; CPU seconds a little above the wall limit, so the wall limit normally decides."""
    return Limits(cpu_s=math.ceil(timeout_s) + 1, memory_mb=memory_mb,
                  address_space_mb=memory_mb if address_space else 0,
                  processes=settings.sandbox_max_processes)


@dataclass
class SupervisorResult:
    """The supervisor's JSON, or why there is none."""

    data: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None  # the platform failed: no verdict about the code
    wall_s: float = 0.0


_SEMAPHORES: dict[int, asyncio.Semaphore] = {}


def _semaphore(size: int) -> asyncio.Semaphore:
    loop_id = id(asyncio.get_running_loop())
    if loop_id not in _SEMAPHORES:
        _SEMAPHORES[loop_id] = asyncio.Semaphore(size)
    return _SEMAPHORES[loop_id]


def capability(settings: Settings | None = None) -> isolation.Capability:
    settings = settings or get_settings()
    return isolation.probe(isolation.sandbox_python(settings.sandbox_python))


def require_python(settings: Settings) -> str:
    python = isolation.sandbox_python(settings.sandbox_python)
    if python is None:
        raise SandboxUnavailable("no Python interpreter under /usr for the sandbox (REWARDHUB_SANDBOX_PYTHON)")
    return python


async def execute(job: dict[str, Any], *, limit_s: float, settings: Settings | None = None) -> SupervisorResult:
    """Run the supervisor on ``job`` in a fresh sandbox; ``limit_s`` is the job's own time budget."""
    settings = settings or get_settings()
    async with _semaphore(settings.sandbox_max_concurrent_runs):
        started = time.monotonic()
        try:
            argv, cleanup, preexec = _command(settings)
        except SandboxUnavailable as exc:
            return SupervisorResult(fault=str(exc))
        try:
            return await _run(argv, job, limit_s + GRACE_S, started, preexec)
        finally:
            cleanup()


def _command(settings: Settings) -> tuple[list[str], Any, Any]:
    python = require_python(settings)
    if settings.sandbox_isolation == "namespaces":
        cap = isolation.probe(python)
        if not cap.namespaces or cap.bwrap is None:
            raise SandboxUnavailable(f"{cap.detail}; code is not run without its namespaces (set "
                                     "REWARDHUB_SANDBOX_ISOLATION=processes to accept weaker isolation)")
        command = isolation.supervisor_command(python, inside_path=isolation.MOUNTED_INSIDE_DIR)
        argv = isolation.bwrap_argv(cap.bwrap, command, disk_mb=settings.sandbox_disk_mb)
        return argv, (lambda: None), isolation.bwrap_preexec()
    # Weak isolation: a private temp dir as the work dir, the supervisor as a plain child.
    workdir = tempfile.mkdtemp(prefix="rewardhub-run-")
    os.chmod(workdir, 0o700)
    if os.geteuid() == 0:
        os.chown(workdir, isolation.NOBODY, isolation.NOBODY)
    argv = ["/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", f"RH_WORK_DIR={workdir}",
            f"HOME={workdir}", *isolation.supervisor_command(python, inside_path=str(isolation.inside_dir()))]
    return argv, (lambda: shutil.rmtree(workdir, ignore_errors=True)), isolation.bwrap_preexec()


async def _run(argv: list[str], job: dict[str, Any], kill_after_s: float, started: float,
               preexec: Any) -> SupervisorResult:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # A session of its own only when the service has a terminal (isolation.py); else a process
            # group of its own, so a run's kill(0, …) reaches only the run and we can kill it whole.
            start_new_session=isolation.service_has_terminal(),
            preexec_fn=_own_group(preexec), limit=MAX_RESULT_BYTES)
    except OSError as exc:
        return SupervisorResult(fault=f"could not start the sandbox: {type(exc).__name__}: {exc}")
    try:
        stdout, stderr = await asyncio.wait_for(_communicate(proc, json.dumps(job).encode()), timeout=kill_after_s)
    except ResultTooLarge:
        _kill(proc)
        await proc.wait()
        return SupervisorResult(fault=f"the run's result exceeded {MAX_RESULT_BYTES} bytes and was dropped",
                                wall_s=time.monotonic() - started)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        return SupervisorResult(fault=f"the sandbox did not finish within {kill_after_s:g}s and was killed",
                                wall_s=time.monotonic() - started)
    except asyncio.CancelledError:  # the caller gave up (client gone, deadline): end the run now
        _kill(proc)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    wall_s = time.monotonic() - started
    try:
        data = json.loads(stdout)
    except ValueError:
        detail = stderr.decode("utf-8", "replace").strip()[-500:]
        return SupervisorResult(fault=f"the sandbox ended without a result (exit {proc.returncode}): {detail}",
                                wall_s=wall_s)
    if "error" in data:
        return SupervisorResult(fault=str(data["error"]), wall_s=wall_s)
    return SupervisorResult(data=data, wall_s=wall_s)


class ResultTooLarge(RuntimeError):
    pass


async def _communicate(proc: asyncio.subprocess.Process, job: bytes) -> tuple[bytes, bytes]:
    """``communicate``, but reading at most ``MAX_RESULT_BYTES`` of the result (and 64 KiB of stderr)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(job)
    await proc.stdin.drain()
    proc.stdin.close()

    async def read(stream: asyncio.StreamReader, cap: int, strict: bool) -> bytes:
        chunks, size = [], 0
        while chunk := await stream.read(1 << 20):
            size += len(chunk)
            if size > cap:
                if strict:
                    raise ResultTooLarge
                continue
            chunks.append(chunk)
        return b"".join(chunks)

    stdout, stderr = await asyncio.gather(read(proc.stdout, MAX_RESULT_BYTES, True), read(proc.stderr, 65536, False))
    await proc.wait()
    return stdout, stderr


def _own_group(then: Any) -> Any:
    """preexec_fn: a process group of its own (unless it leads a new session), then ``then``."""
    def preexec() -> None:
        if not isolation.service_has_terminal():
            os.setpgid(0, 0)
        if then is not None:
            then()

    return preexec


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def decoded(step: dict[str, Any], key: str) -> str:
    return base64.b64decode(step.get(key) or b"").decode("utf-8", "replace")

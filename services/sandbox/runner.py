"""Start one sandboxed run and collect its result: a process per run, never a thread.

The service's event loop only waits on pipes, so health checks and other requests are answered
while any number of runs execute; ``REWARDHUB_SANDBOX_MAX_CONCURRENT_RUNS`` bounds how many run
at once, and a per-project cap how many of them one project holds (``RunSlots``; the rest queue,
and their time limits start when they start). A run that overstays its
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
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Any

from services.common.cpu import available_cpus, sized_pool
from services.common.metrics import SANDBOX_RUNS
from services.common.settings import Settings, get_settings
from services.sandbox import isolation, seccomp

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


# What a run's caller may name as its tenant (the verifier sends its key's project id).
PROJECT_HEADER = "X-Rewardhub-Project"


class RunSlots:
    """How many runs execute at once: at most ``total``, and at most ``per_project`` of one project.

    A run first takes a slot of its project, then one of the total: a flooding project's excess
    waits on its own queue, so another project's run starts as soon as a slot of the total is free
    (with the defaults, 28 are always left to the others). Runs without a project share one queue.
    """

    def __init__(self, total: int, per_project: int) -> None:
        self.total = asyncio.Semaphore(total)
        self.per_project = per_project
        self._projects: dict[str, tuple[asyncio.Semaphore, int]] = {}  # project -> (its slots, users)

    @contextlib.asynccontextmanager
    async def hold(self, project: str | None) -> AsyncIterator[None]:
        key = project or ""
        semaphore, users = self._projects.get(key, (asyncio.Semaphore(self.per_project), 0))
        self._projects[key] = (semaphore, users + 1)
        try:
            async with semaphore, self.total:
                yield
        finally:
            semaphore, users = self._projects[key]
            if users == 1:  # nobody holds or waits for it: forget the project
                del self._projects[key]
            else:
                self._projects[key] = (semaphore, users - 1)

    def running(self, project: str | None) -> int:
        """Runs of ``project`` holding or waiting for its slots (for tests and reports)."""
        return self._projects.get(project or "", (None, 0))[1]


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RunSlots] = weakref.WeakKeyDictionary()


def runs_per_project(settings: Settings) -> int:
    return settings.sandbox_max_runs_per_project


def max_concurrent_runs(settings: Settings) -> int:
    """Run slots on this host: the setting, or (with ``sandbox_runs_per_cpu``) sized from the CPU limit."""
    return sized_pool(settings.sandbox_max_concurrent_runs, settings.sandbox_runs_per_cpu, available_cpus())


def slots(settings: Settings) -> RunSlots:
    """This event loop's slots (asyncio primitives belong to one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _SLOTS:  # keyed by the loop itself: a closed loop's id may be reused
        _SLOTS[loop] = RunSlots(max_concurrent_runs(settings), runs_per_project(settings))
    return _SLOTS[loop]


def capability(settings: Settings | None = None) -> isolation.Capability:
    settings = settings or get_settings()
    return isolation.probe(isolation.sandbox_python(settings.sandbox_python))


def require_python(settings: Settings) -> str:
    python = isolation.sandbox_python(settings.sandbox_python)
    if python is None:
        raise SandboxUnavailable("no Python interpreter under /usr for the sandbox (REWARDHUB_SANDBOX_PYTHON)")
    return python


async def execute(job: dict[str, Any], *, limit_s: float, settings: Settings | None = None,
                  project: str | None = None) -> SupervisorResult:
    """Run the supervisor on ``job`` in a fresh sandbox; ``limit_s`` is the job's own time budget,
    ``project`` the tenant whose slots it takes (``RunSlots``)."""
    settings = settings or get_settings()
    async with slots(settings).hold(project):
        started = time.monotonic()
        try:
            command = sandbox_command(settings, memory_mb=int(job["limits"]["memory_mb"]))
        except SandboxUnavailable as exc:
            SANDBOX_RUNS.labels("unavailable").inc()
            return SupervisorResult(fault=str(exc))
        try:
            return await _run(command, job, limit_s + GRACE_S, started)
        finally:
            command.cleanup()


@dataclass
class Command:
    """How to start one run's supervisor, and what to undo after it."""

    argv: list[str]
    preexec: Callable[[], None] | None  # None: none, so the spawn can vfork (isolation.bwrap_spawn_options)
    seccomp: list[str]  # base64 programs the supervisor stacks on each child
    pass_fds: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # more Popen options (user, group)
    workdir: str | None = None  # the weak mode's private directory

    def cleanup(self) -> None:
        for fd in self.pass_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def sandbox_command(settings: Settings, *, memory_mb: int, entry: str = "supervisor.py") -> Command:
    """How to start a sandbox whose PID 1 is ``entry`` (``isolation.supervisor_command``)."""
    python = require_python(settings)
    if settings.sandbox_isolation == "namespaces":
        cap = isolation.probe(python)
        if not cap.namespaces or cap.bwrap is None:
            raise SandboxUnavailable(f"{cap.detail}; code is not run without its namespaces (set "
                                     "REWARDHUB_SANDBOX_ISOLATION=processes to accept weaker isolation)")
        programs = seccomp.programs()  # built by the probe already: cached
        command = isolation.supervisor_command(python, inside_path=isolation.MOUNTED_INSIDE_DIR, entry=entry)
        fd = seccomp.program_fd(programs.run)
        sizes = isolation.tmpfs_sizes(disk_mb=settings.sandbox_disk_mb, memory_mb=memory_mb)
        argv = isolation.bwrap_argv(cap.bwrap, command, sizes=sizes, seccomp_fd=fd)
        return Command(argv, None, [_b64(programs.child)], pass_fds=(fd,), options=isolation.bwrap_spawn_options())
    # Weak isolation: a private temp dir as the work dir, the supervisor as a plain child; its
    # children get both filters from it (where libseccomp is there: this mode promises less).
    try:
        programs = seccomp.programs()
        filters = [_b64(programs.run), _b64(programs.child)]
    except seccomp.SeccompUnavailable:
        filters = []
    workdir = tempfile.mkdtemp(prefix="rewardhub-run-")
    os.chmod(workdir, 0o700)
    if os.geteuid() == 0:
        os.chown(workdir, isolation.NOBODY, isolation.NOBODY)
    argv = ["/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", f"RH_WORK_DIR={workdir}",
            f"HOME={workdir}", *isolation.supervisor_command(python, inside_path=str(isolation.inside_dir()),
                                                          entry=entry)]
    return Command(argv, isolation.weak_preexec(), filters, workdir=workdir)


def _b64(program: bytes) -> str:
    return base64.b64encode(program).decode()


async def _run(command: Command, job: dict[str, Any], kill_after_s: float, started: float) -> SupervisorResult:
    try:
        # subprocess.Popen, not the loop's subprocess_exec: uvloop's takes neither process_group nor
        # user/group, and without a preexec_fn Python can vfork (isolation.bwrap_spawn_options).
        proc = subprocess.Popen(command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=command.pass_fds, **group_options(command))
    except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: a failing preexec_fn
        SANDBOX_RUNS.labels("start_failed").inc()
        return SupervisorResult(fault=f"could not start the sandbox: {type(exc).__name__}: {exc}")
    for fd in command.pass_fds:  # bwrap has its copy; ours would only keep the pipe open
        with contextlib.suppress(OSError):
            os.close(fd)
    command.pass_fds = ()
    job = {**job, "seccomp": command.seccomp}
    try:
        stdout, stderr = await asyncio.wait_for(_communicate(proc, json.dumps(job).encode()), timeout=kill_after_s)
    except ResultTooLarge:
        return await _stopped(proc, "result_too_large", started,
                              f"the run's result exceeded {MAX_RESULT_BYTES} bytes and was dropped")
    except TimeoutError:
        return await _stopped(proc, "killed", started,
                              f"the sandbox did not finish within {kill_after_s:g}s and was killed")
    except asyncio.CancelledError:  # the caller gave up (client gone, deadline): end the run now
        SANDBOX_RUNS.labels("cancelled").inc()
        kill_sandbox(proc)
        with contextlib.suppress(Exception):
            await asyncio.shield(exited(proc))
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    wall_s = time.monotonic() - started
    try:
        data = json.loads(stdout)
    except ValueError:
        detail = stderr.decode("utf-8", "replace").strip()[-500:]
        SANDBOX_RUNS.labels("no_result").inc()
        return SupervisorResult(fault=f"the sandbox ended without a result (exit {proc.returncode}): {detail}",
                                wall_s=wall_s)
    if "error" in data:
        SANDBOX_RUNS.labels("supervisor_error").inc()
        return SupervisorResult(fault=str(data["error"]), wall_s=wall_s)
    SANDBOX_RUNS.labels("completed").inc()
    return SupervisorResult(data=data, wall_s=wall_s)


class ResultTooLarge(RuntimeError):
    pass


async def _communicate(proc: subprocess.Popen[bytes], job: bytes) -> tuple[bytes, bytes]:
    """``communicate`` on the event loop, reading at most ``MAX_RESULT_BYTES`` of the result (and
    64 KiB of stderr), then waiting for the exit."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdout, stderr, _ = await asyncio.gather(_read_capped(proc.stdout.fileno(), MAX_RESULT_BYTES, strict=True),
                                             _read_capped(proc.stderr.fileno(), 65536, strict=False),
                                             _write_job(proc.stdin, job))
    await exited(proc)
    return stdout, stderr


async def fd_ready(fd: int, *, write: bool) -> None:
    """Until ``fd`` can be read (or written) without blocking."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _write_job(pipe: IO[bytes], job: bytes) -> None:
    """Write the job, then close the pipe: the supervisor reads its stdin to the end."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    view = memoryview(job)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await fd_ready(fd, write=True)
    except BrokenPipeError:  # the supervisor is gone: its missing result says so
        pass
    finally:
        pipe.close()


async def _read_capped(fd: int, cap: int, *, strict: bool) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            await fd_ready(fd, write=False)
            continue
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            if strict:
                raise ResultTooLarge
            continue
        chunks.append(chunk)


async def exited(proc: subprocess.Popen[bytes]) -> int:
    """Wait for ``proc`` without a thread: its pidfd becomes readable when it exits."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # a kernel before 5.3: poll
        while proc.poll() is None:
            await asyncio.sleep(0.05)
        return proc.returncode
    try:
        while proc.poll() is None:
            await fd_ready(pidfd, write=False)
    finally:
        os.close(pidfd)
    return proc.returncode


def group_options(command: Command) -> dict[str, Any]:
    """A session of its own only when the service has a terminal (isolation.py); else a process
    group of its own, so a run's ``kill(0, …)`` reaches only the run and we can kill it whole."""
    session = isolation.service_has_terminal()
    if command.preexec is None:
        return {"start_new_session": session, **({} if session else {"process_group": 0}), **command.options}
    return {"start_new_session": session, "preexec_fn": _own_group(command.preexec), **command.options}


def _own_group(then: Any) -> Any:
    """preexec_fn: a process group of its own (unless it leads a new session), then ``then``."""
    def preexec() -> None:
        if not isolation.service_has_terminal():
            os.setpgid(0, 0)
        if then is not None:
            then()

    return preexec


async def _stopped(proc: subprocess.Popen[bytes], status: str, started: float, fault: str) -> SupervisorResult:
    """End a run whose sandbox must not go on: kill it, wait for it, count how it ended."""
    kill_sandbox(proc)
    await exited(proc)
    SANDBOX_RUNS.labels(status).inc()
    return SupervisorResult(fault=fault, wall_s=time.monotonic() - started)


def kill_sandbox(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def decoded(step: dict[str, Any], key: str) -> str:
    return base64.b64decode(step.get(key) or b"").decode("utf-8", "replace")

"""Stateful tool sessions: a persistent Python namespace per trajectory, isolated like a one-shot run.

A session is one long-lived sandbox: the same ``bwrap`` command line, seccomp filter, tmpfs caps
and rlimits as a one-shot run (``runner.sandbox_command``), whose PID 1 is ``inside/session.py``
instead of ``inside/supervisor.py``. That supervisor starts the interpreter (``inside/repl.py``) as
its child and relays length-prefixed JSON frames between the service (the bwrap's stdin and
stdout) and the interpreter, enforcing each execute's wall timeout and output cap and the
session's memory limit (resident sets plus tmpfs files, as a one-shot run's) and CPU budget.

- An execute that runs past ``timeout_s`` is killed with its whole session: the answer is
  ``timeout`` (with what it printed so far), the session ends with reason ``timeout``, and later
  calls are 409 ``session_ended``. Memory over the limit, the interpreter dying and the CPU budget
  (``REWARDHUB_SANDBOX_SESSION_CPU_S``, the interpreter's RLIMIT_CPU over its whole life) end the
  session too.
- Idle sessions (no execute for ``ttl_s``) are reaped by the sweeper (``SessionRegistry.sweep``,
  every ``REWARDHUB_SANDBOX_SESSION_SWEEP_S``), which also notices sessions that died between
  requests.
- Caps: at most ``REWARDHUB_SANDBOX_MAX_SESSIONS`` live (or starting) sessions in the process and
  ``REWARDHUB_SANDBOX_MAX_SESSIONS_PER_PROJECT`` of one project; over either, 429
  ``sessions_exhausted``. Executes and start-ups take the one-shot runs' slots (``runner.RunSlots``)
  while they run, so sessions and one-shot runs share the host's CPU bound.
- A session belongs to the project its creator named (``X-Rewardhub-Project``); another project's
  id answers exactly as an unknown one (404 ``session_not_found``).
- Ended sessions are remembered (small records, no output) for
  ``REWARDHUB_SANDBOX_SESSION_ENDED_RETENTION_S`` and at most ``MAX_ENDED_RECORDS_FACTOR`` times the
  session cap, then forgotten (404).

Sessions live in this process's memory only: a restarted sandbox knows none of them, and their
ids are 404 there (a client creates a new session and replays its code). Every session's ``bwrap``
has ``--die-with-parent``, and ``shutdown`` (the app's lifespan) kills them all.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import secrets
import struct
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.errors import ApiError, InvalidInput, NotFound, RateLimited
from services.common.metrics import SANDBOX_SESSION_EXECUTIONS, SANDBOX_SESSIONS_ENDED, SANDBOX_SESSIONS_LIVE
from services.common.sandbox_api import (
    SessionCreated,
    SessionCreateRequest,
    SessionExecuteRequest,
    SessionExecuteResponse,
    SessionInfo,
)
from services.common.settings import Settings
from services.sandbox import isolation, runner

log = logging.getLogger("rewardhub.sandbox.sessions")

ENTRY = "session.py"
HEADER = struct.Struct(">I")
START_TIMEOUT_S = isolation.PROBE_TIMEOUT_S  # bwrap, the supervisor and the interpreter up
CLOSE_GRACE_S = 2.0  # a polite close's answer, before the sandbox is killed
MAX_FRAME_BYTES = 64 * 1024 * 1024  # one answer: two capped streams as JSON strings, at worst escaped
MAX_ENDED_RECORDS_FACTOR = 4
# inside/session.py's exit status when the session ended between requests (its EXIT_CODES).
EXIT_REASONS = {0: "closed", 70: "timeout", 71: "memory_exceeded", 72: "cpu_limit", 73: "exited",
                74: "protocol_error"}


class SessionFault(RuntimeError):
    """The session's sandbox broke the protocol or died without answering (a platform fault)."""


def _fault(message: str) -> ApiError:
    return ApiError(message, code="sandbox_unavailable", status_code=503)


class SessionsExhausted(RateLimited):
    code = "sessions_exhausted"


def session_not_found(session_id: str) -> NotFound:
    """The one answer for an unknown id and another project's (no oracle)."""
    return NotFound(f"no session {session_id!r}", field="session_id", code="session_not_found")


class SessionEnded(ApiError):
    status_code = 409
    code = "session_ended"

    def __init__(self, session_id: str, reason: str | None) -> None:
        super().__init__(f"session {session_id!r} has ended ({reason}); create a new session", field="session_id")


# --- one session's sandbox --------------------------------------------------------------------


class SessionProcess:
    """A session's ``bwrap`` (or, in the weak mode, its supervisor) and the frame pipes to it."""

    def __init__(self, proc: subprocess.Popen[bytes], command: runner.Command, pidfd: int | None) -> None:
        self.proc = proc
        self.command = command
        self.pidfd = pidfd  # PID 1 of the session's namespace: readable once every process of it is gone
        self.in_request = False
        self._buffer = bytearray()
        self._closed = False
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)

    @classmethod
    async def start(cls, settings: Settings, *, limits: runner.Limits, python: str) -> SessionProcess:
        """Start the sandbox and wait until its interpreter is up; raises ``runner.SandboxUnavailable``
        (this host cannot isolate) or ``SessionFault``."""
        command = runner.sandbox_command(settings, memory_mb=limits.memory_mb, entry=ENTRY)
        info_r = info_w = -1
        if settings.sandbox_isolation == "namespaces":
            info_r, info_w = os.pipe()  # bwrap writes {"child-pid": N}: PID 1's pid on the host
            command.argv[1:1] = ["--info-fd", str(info_w)]
            command.pass_fds = (*command.pass_fds, info_w)
        try:
            proc = subprocess.Popen(command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, pass_fds=command.pass_fds,
                                    **runner.group_options(command))
        except (OSError, subprocess.SubprocessError) as exc:
            command.cleanup()
            for fd in (info_r, info_w):
                if fd >= 0:
                    os.close(fd)
            raise SessionFault(f"could not start the sandbox: {type(exc).__name__}: {exc}") from exc
        for fd in command.pass_fds:  # bwrap has its copies
            with contextlib.suppress(OSError):
                os.close(fd)
        command.pass_fds = ()
        session = cls(proc, command, None)
        try:
            job = {"mode": "session", "limits": limits.as_job(), "seccomp": command.seccomp, "python": python}
            async with asyncio.timeout(START_TIMEOUT_S):
                if info_r >= 0:
                    session.pidfd = await _child_pidfd(info_r)
                await session._write(job)
                ready = await session._read_frame()
            if ready.get("ready") is not True:
                raise SessionFault(str(ready.get("error") or f"the session did not start: {ready!r}"[:500]))
        except TimeoutError:
            await session.kill()
            raise SessionFault(f"the session's sandbox did not start within {START_TIMEOUT_S:g}s") from None
        except BaseException:
            await session.kill()
            raise
        finally:
            if info_r >= 0:
                os.close(info_r)
        return session

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    async def request(self, message: dict[str, Any], *, limit_s: float) -> dict[str, Any]:
        """Send one request and wait (at most ``limit_s``) for its answer; raises ``SessionFault``
        or ``TimeoutError`` (the sandbox then is killed)."""
        self.in_request = True
        try:
            async with asyncio.timeout(limit_s):
                await self._write(message)
                return await self._read_frame()
        except TimeoutError:
            await self.kill()
            raise
        finally:
            self.in_request = False

    async def close(self, *, polite: bool = True) -> None:
        """End the session: ask its supervisor to kill and reap everything (``polite``, and no request
        in flight), then kill the sandbox and wait until every process of it is gone."""
        if self._closed:
            return
        if polite and not self.in_request and self.returncode is None:
            with contextlib.suppress(SessionFault, TimeoutError, OSError):
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await self._write({"op": "close"})
                    await self._read_frame()
        await self.kill()

    async def kill(self) -> None:
        if self._closed:
            return
        self._closed = True
        runner.kill_sandbox(self.proc)
        try:
            await runner.exited(self.proc)
            if self.pidfd is not None:
                await runner.fd_ready(self.pidfd, write=False)
        finally:
            self.release()

    def release(self) -> None:
        """Close the pipes and the pidfd, remove the weak mode's directory (the process is gone)."""
        self._closed = True
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None
        self.command.cleanup()

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL, no waiting."""
        if not self._closed:
            runner.kill_sandbox(self.proc)

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        data = json.dumps(message).encode("utf-8")
        view = memoryview(HEADER.pack(len(data)) + data)
        fd = self.proc.stdin.fileno()
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await runner.fd_ready(fd, write=True)
            except OSError as exc:  # BrokenPipe: the sandbox is gone
                raise SessionFault(f"the session's sandbox is gone ({type(exc).__name__})") from exc

    async def _read_frame(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            if len(self._buffer) >= HEADER.size:
                (size,) = HEADER.unpack(self._buffer[:HEADER.size])
                if size > MAX_FRAME_BYTES:
                    raise SessionFault(f"the session's answer ({size} bytes) exceeds {MAX_FRAME_BYTES}")
                if len(self._buffer) >= HEADER.size + size:
                    body = bytes(self._buffer[HEADER.size:HEADER.size + size])
                    del self._buffer[:HEADER.size + size]
                    try:
                        message = json.loads(body)
                    except ValueError as exc:
                        raise SessionFault("the session's answer is not JSON") from exc
                    if not isinstance(message, dict):
                        raise SessionFault("the session's answer is not an object")
                    return message
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                await runner.fd_ready(fd, write=False)
                continue
            except OSError as exc:
                raise SessionFault(f"the session's sandbox is gone ({type(exc).__name__})") from exc
            if not chunk:
                raise SessionFault(f"the session's sandbox ended (exit {self.proc.poll()}) without answering")
            self._buffer.extend(chunk)


async def _child_pidfd(info_r: int) -> int | None:
    """bwrap's ``--info-fd`` JSON (``{"child-pid": N}``), as a pidfd of that process (None where the
    kernel has no pidfds: then the bwrap's own exit is what is waited for)."""
    os.set_blocking(info_r, False)
    data = b""
    while True:
        try:
            chunk = os.read(info_r, 4096)
        except BlockingIOError:
            await runner.fd_ready(info_r, write=False)
            continue
        data += chunk
        if not chunk or data.rstrip().endswith(b"}"):
            break
    try:
        pid = int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionFault(f"bwrap did not report its child: {data[:200]!r}") from exc
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


# --- the registry -----------------------------------------------------------------------------


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass
class SessionRecord:
    """What the registry holds per session: small metadata and the process handle, no output."""

    session_id: str
    project: str
    ttl_s: int
    created_at: float
    last_used_at: float
    language: str = "python"
    state: str = "starting"  # starting | live | ended
    ended_reason: str | None = None
    ended_at: float | None = None
    execution_count: int = 0
    process: SessionProcess | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def expires_at(self) -> float:
        return self.last_used_at + self.ttl_s

    def created(self) -> SessionCreated:
        return SessionCreated(session_id=self.session_id, language="python", ttl_s=self.ttl_s,
                              created_at=_utc(self.created_at), expires_at=_utc(self.expires_at))

    def info(self) -> SessionInfo:
        return SessionInfo(session_id=self.session_id, state="ended" if self.state == "ended" else "live",
                           ended_reason=self.ended_reason, execution_count=self.execution_count,
                           last_used_at=_utc(self.last_used_at), expires_at=_utc(self.expires_at))


_REGISTRIES: weakref.WeakSet[SessionRegistry] = weakref.WeakSet()


@atexit.register
def _kill_all_at_exit() -> None:
    """The interpreter is exiting without the lifespan's shutdown (the embedded default mounts the
    sandbox, and mounted apps get no lifespan): kill every session's sandbox. (``--die-with-parent``
    would kill them too once this process is gone.)"""
    for registry in list(_REGISTRIES):
        for record in registry.records.values():
            if record.process is not None:
                record.process.kill_now()


class SessionRegistry:
    """Every session of this service process, by id; ``clock`` (epoch seconds) is injectable."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.records: dict[str, SessionRecord] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        _REGISTRIES.add(self)

    # --- lookups and caps ---------------------------------------------------------------------

    def get(self, session_id: str, project: str | None) -> SessionRecord:
        record = self.records.get(session_id)
        if record is None or record.project != (project or "") or record.state == "starting":
            raise session_not_found(session_id)
        return record

    def live_count(self, project: str | None = None) -> int:
        """Sessions holding (or starting) a sandbox: all of them, or ``project``'s."""
        return sum(1 for r in self.records.values() if r.state != "ended"
                   and (project is None or r.project == project))

    # --- the API's operations -----------------------------------------------------------------

    async def create(self, body: SessionCreateRequest, settings: Settings, *, project: str | None) -> SessionCreated:
        if body.ttl_s > settings.sandbox_session_max_ttl_s:
            raise InvalidInput(f"ttl_s: at most {settings.sandbox_session_max_ttl_s} seconds here "
                               "(REWARDHUB_SANDBOX_SESSION_MAX_TTL_S)", field="ttl_s")
        if self._closing:
            raise _fault("the sandbox is shutting down")
        owner = project or ""
        retry_after = settings.sandbox_session_sweep_s
        if self.live_count() >= settings.sandbox_max_sessions:
            raise SessionsExhausted(f"{settings.sandbox_max_sessions} sessions are live on this sandbox "
                                    "(REWARDHUB_SANDBOX_MAX_SESSIONS); close one or retry later",
                                    retry_after_s=retry_after)
        if self.live_count(owner) >= settings.sandbox_max_sessions_per_project:
            raise SessionsExhausted(f"this project has {settings.sandbox_max_sessions_per_project} live sessions "
                                    "(REWARDHUB_SANDBOX_MAX_SESSIONS_PER_PROJECT); close one or retry later",
                                    retry_after_s=retry_after)
        self.ensure_sweeper(settings)
        memory_mb = body.memory_mb if body.memory_mb is not None else settings.sandbox_memory_mb
        limits = runner.Limits(cpu_s=settings.sandbox_session_cpu_s, memory_mb=memory_mb,
                               address_space_mb=memory_mb, processes=settings.sandbox_max_processes)
        now = self.clock()
        record = SessionRecord(session_id=_new_id(), project=owner, ttl_s=body.ttl_s, created_at=now,
                               last_used_at=now)
        self.records[record.session_id] = record  # reserved: counts against the caps while it starts
        try:
            python = runner.require_python(settings)
            async with runner.slots(settings).hold(project):
                process = await SessionProcess.start(settings, limits=limits, python=python)
        except runner.SandboxUnavailable as exc:
            del self.records[record.session_id]
            raise _fault(str(exc)) from exc
        except SessionFault as exc:
            del self.records[record.session_id]
            raise _fault(str(exc)) from exc
        except BaseException:
            self.records.pop(record.session_id, None)
            raise
        if record.state == "ended":  # the service shut down while it started
            await process.kill()
            raise _fault("the sandbox is shutting down")
        record.process = process
        record.state = "live"
        record.created_at = record.last_used_at = self.clock()
        SANDBOX_SESSIONS_LIVE.inc()
        return record.created()

    def info(self, session_id: str, project: str | None) -> SessionInfo:
        return self.get(session_id, project).info()

    async def execute(self, session_id: str, body: SessionExecuteRequest, settings: Settings, *,
                      project: str | None) -> SessionExecuteResponse:
        record = self.get(session_id, project)
        if body.max_output_bytes > settings.sandbox_max_output_bytes:
            raise InvalidInput(f"max_output_bytes: at most {settings.sandbox_max_output_bytes} here "
                               "(REWARDHUB_SANDBOX_MAX_OUTPUT_BYTES)", field="max_output_bytes")
        # Shielded: a caller that goes away mid-execute leaves the session consistent (the answer is
        # read and dropped, the lock held until then), never half-way through a frame.
        task = asyncio.ensure_future(self._execute(record, body, settings, project))
        task.add_done_callback(_retrieve)  # its error, should nobody await it any more
        return await asyncio.shield(task)

    async def _execute(self, record: SessionRecord, body: SessionExecuteRequest, settings: Settings,
                       project: str | None) -> SessionExecuteResponse:
        async with record.lock:
            await self._check_alive(record)
            async with runner.slots(settings).hold(project):
                await self._check_alive(record)  # closed while waiting for a slot?
                process = record.process
                assert process is not None
                record.execution_count += 1
                record.last_used_at = self.clock()
                message = {"op": "execute", "code": body.code, "timeout_s": body.timeout_s,
                           "max_output_bytes": body.max_output_bytes}
                started = time.monotonic()
                try:
                    answer = await process.request(message, limit_s=body.timeout_s + runner.GRACE_S)
                except TimeoutError:
                    answer = {"status": "timeout", "stdout": "", "truncated": False, "ended": "timeout",
                              "duration_s": time.monotonic() - started,
                              "stderr": f"the session's sandbox did not answer within {body.timeout_s:g}s "
                                        f"plus {runner.GRACE_S:g}s and was killed; the session has ended\n"}
                except SessionFault as exc:
                    if record.state == "ended":  # closed (DELETE, the sweeper, shutdown) meanwhile
                        raise SessionEnded(record.session_id, record.ended_reason) from exc
                    await self._end(record, "error")
                    raise _fault(f"{exc}; the session has ended") from exc
                finally:
                    record.last_used_at = self.clock()
            status = str(answer.get("status"))
            if status not in ("success", "timeout", "runtime_error") or "error" in answer:
                await self._end(record, "error")
                raise _fault(f"the session's sandbox failed: {answer.get('error') or answer!r}"[:1000])
            SANDBOX_SESSION_EXECUTIONS.labels(status).inc()
            if answer.get("ended"):
                await self._end(record, str(answer["ended"]))
            return SessionExecuteResponse(status=status,
                                          stdout=str(answer.get("stdout", "")), stderr=str(answer.get("stderr", "")),
                                          truncated=bool(answer.get("truncated")),
                                          execution_count=record.execution_count,
                                          duration_s=float(answer.get("duration_s", 0.0)))

    async def _check_alive(self, record: SessionRecord) -> None:
        """409 for an ended session, after ending one whose sandbox died since its last request."""
        if record.state == "live" and record.process is not None and record.process.returncode is not None:
            await self._end(record, EXIT_REASONS.get(record.process.returncode, "error"))
        if record.state != "live":
            raise SessionEnded(record.session_id, record.ended_reason)

    async def close(self, session_id: str, project: str | None) -> None:
        """DELETE: end the session (idempotent for its owner; unknown or foreign ids are 404)."""
        record = self.get(session_id, project)
        await self._end(record, "closed")

    async def _end(self, record: SessionRecord, reason: str) -> None:
        """Mark the session ended (once) and wait until every process of its sandbox is gone."""
        if record.state != "ended":
            was_live = record.state == "live"
            record.state = "ended"
            record.ended_reason = reason
            record.ended_at = self.clock()
            if was_live:
                SANDBOX_SESSIONS_LIVE.dec()
                SANDBOX_SESSIONS_ENDED.labels(reason).inc()
        if record.process is not None:
            # Ended by its own answer, or the service stopping: the supervisor is exiting or must not
            # be waited for, so no polite close.
            await record.process.close(polite=reason in ("closed", "expired"))

    # --- the sweeper and shutdown ---------------------------------------------------------------

    async def sweep(self, now: float | None = None, settings: Settings | None = None) -> list[str]:
        """Reap idle-expired sessions and notice dead ones; forget old ended records. Returns the ids
        ended by this sweep. ``now`` (epoch seconds) defaults to the registry's clock."""
        from services.common.settings import get_settings

        settings = settings or get_settings()
        now = self.clock() if now is None else now
        ending: list[tuple[SessionRecord, str]] = []
        for record in list(self.records.values()):
            if record.state != "live" or record.lock.locked() or record.process is None:
                continue  # starting, ended, or an execute in flight (which is use, not idleness)
            code = record.process.returncode
            if code is not None:
                ending.append((record, EXIT_REASONS.get(code, "error")))
            elif record.expires_at <= now:
                ending.append((record, "expired"))
        await asyncio.gather(*(self._end(record, reason) for record, reason in ending))
        self._forget_ended(now, settings)
        return [record.session_id for record, _ in ending]

    def _forget_ended(self, now: float, settings: Settings) -> None:
        ended = sorted((r for r in self.records.values() if r.state == "ended" and not r.lock.locked()),
                       key=lambda r: r.ended_at or 0.0)
        keep = MAX_ENDED_RECORDS_FACTOR * settings.sandbox_max_sessions
        for index, record in enumerate(ended):
            old = (record.ended_at or 0.0) + settings.sandbox_session_ended_retention_s <= now
            if old or index < len(ended) - keep:
                del self.records[record.session_id]

    def ensure_sweeper(self, settings: Settings) -> None:
        """Start the sweeper on the running loop if it is not running (the lifespan starts it; mounted
        in the embedded platform, the first session does)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(settings.sandbox_session_sweep_s),
                                                                  name="sandbox-session-sweeper")

    async def _sweep_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sweep()
            except Exception:  # one bad sweep must not stop the reaping
                log.exception("session sweep failed")

    async def shutdown(self) -> None:
        """Stop the sweeper and kill every session (the service is stopping)."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        live = [r for r in self.records.values() if r.state != "ended"]
        await asyncio.gather(*(self._end(record, "shutdown") for record in live))
        self._closing = False


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _new_id() -> str:
    return "ses_" + secrets.token_urlsafe(18)

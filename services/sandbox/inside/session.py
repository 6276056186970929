"""A tool session's supervisor: PID 1 of the session's sandbox, for as long as the session lives.

Started by the sandbox service as ``python3 -I -S session.py`` inside the same bubblewrap command
line as a one-shot run's ``supervisor.py`` (same namespaces, mounts, seccomp filter), it reuses that
supervisor's pieces (``supervisor.py``: non-dumpable, signals ignored, the child's rlimits and
stacked seccomp programs, the run's memory as resident sets plus tmpfs files, killing and reaping
every other process of the namespace). Instead of one job on stdin it reads length-prefixed JSON
frames (4-byte big-endian length, UTF-8 JSON) on stdin and answers each with one frame on stdout:

- first ``{"mode": "session", "limits", "seccomp", "python"}``: it starts the interpreter
  (``repl.py``) as its child and answers ``{"ready": true}`` once that is up;
- ``{"op": "execute", "code", "timeout_s", "max_output_bytes"}``: the code runs in the
  interpreter's persistent namespace; the answer is ``{"status": "success" | "runtime_error" |
  "timeout", "stdout", "stderr", "truncated", "duration_s", "ended"}``. ``ended`` names why the
  session is over (``timeout``, ``memory_exceeded``, ``cpu_limit``, ``exited``, ``protocol_error``)
  or is null; once it is set, every other process of the session has been killed and reaped and
  this process exits;
- ``{"op": "close"}``: every other process is killed and reaped, then ``{"closed": true}``.

Between requests it keeps watching: output written meanwhile (a background thread's) is kept for
the next answer; a session whose memory goes over its limit, or whose interpreter dies, is ended
at once and this process exits with a code naming why (``EXIT_CODES``), which the service reads.
The service's end of stdin closing ends the session too.

Standard library only: it runs under the sandbox's interpreter, not the service's.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # -I leaves the script's folder off sys.path

import supervisor as sup  # noqa: E402  (the one-shot supervisor's primitives)
from frames import HEADER, read_frame, write_frame  # noqa: E402

REPL = os.path.join(HERE, "repl.py")
READY_TIMEOUT_S = 20.0
# Idle sessions wake once a second to check memory and the interpreter: a thousand idle sessions
# cost a thousand short wake-ups a second, not fifty thousand.
IDLE_POLL_S = 1.0
MAX_ANSWER_BYTES = 1 << 20  # an answer frame of the interpreter's (untrusted): ``{"ok": true}`` is 12 bytes
MAX_PENDING_BYTES = 1 << 20  # output written between requests, kept for the next answer
READ_CHUNKS = 16  # of 64 KiB per wake-up: more than a pipe holds (at most 1 MiB, F_SETPIPE_SZ)
DRAIN_S = 1.0  # after the end: reading what the killed processes left in the pipes
# How the session ended, as this process's exit status (bwrap exits with it): the service reads it
# when the session ended between requests.
EXIT_CODES = {"closed": 0, "timeout": 70, "memory_exceeded": 71, "cpu_limit": 72, "exited": 73,
              "protocol_error": 74}


class Capture:
    """One stream's output for one answer: at most ``cap`` bytes kept, the rest read and dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.data.extend(chunk[:room])

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")


class Session:
    """The interpreter child and the pipes to it."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.limits: dict[str, int] = job["limits"]
        self.memory_budget = int(self.limits["memory_mb"]) * 1024 * 1024
        request_r, self.request_w = os.pipe()
        self.answer_r, answer_w = os.pipe()
        stdin_fd = sup._memfd(b"")
        try:
            self.proc = subprocess.Popen(
                [str(job["python"]), "-I", REPL, str(request_r), str(answer_w)], stdin=stdin_fd,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=sup.WORK_DIR, close_fds=True,
                pass_fds=(request_r, answer_w), preexec_fn=sup._limiter(self.limits), env=sup._child_env())
        finally:
            for fd in (stdin_fd, request_r, answer_w):
                os.close(fd)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout_fd, self.stderr_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        for fd in (self.stdout_fd, self.stderr_fd, self.answer_r, self.request_w):
            os.set_blocking(fd, False)
        self.open_fds = {self.stdout_fd, self.stderr_fd, self.answer_r}
        self.answer = bytearray()
        self.pending = {self.stdout_fd: Capture(MAX_PENDING_BYTES), self.stderr_fd: Capture(MAX_PENDING_BYTES)}

    # --- reading ------------------------------------------------------------------------------

    def _read(self, fd: int, into: Capture | None) -> None:
        """Read what ``fd`` holds now, at most ``READ_CHUNKS`` chunks (a writer faster than this
        reader must not keep it from its deadline); ``into`` None: the answer pipe."""
        for _ in range(READ_CHUNKS):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.open_fds.discard(fd)
                return
            if into is None:
                if len(self.answer) <= MAX_ANSWER_BYTES + HEADER.size:
                    self.answer.extend(chunk)
            else:
                into.add(chunk)

    def _answer(self) -> dict[str, Any] | str | None:
        """The interpreter's answer once a whole frame is in (a string: why it is not one)."""
        if len(self.answer) < HEADER.size:
            return None
        (size,) = HEADER.unpack(self.answer[:HEADER.size])
        if size > MAX_ANSWER_BYTES:
            return "an answer frame too large"
        if len(self.answer) < HEADER.size + size:
            return None
        body = bytes(self.answer[HEADER.size:HEADER.size + size])
        del self.answer[:HEADER.size + size]
        try:
            message = json.loads(body)
        except ValueError:
            return "an answer that is not JSON"
        return message if isinstance(message, dict) else "an answer that is not an object"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        sink = Capture(4096)
        while time.monotonic() < deadline:
            ready, _, _ = select.select(list(self.open_fds), [], [], sup.POLL_S)
            for fd in ready:
                self._read(fd, None if fd == self.answer_r else sink if fd == self.stderr_fd
                           else self.pending[self.stdout_fd])
            answer = self._answer()
            if isinstance(answer, dict) and answer.get("ready") is True:
                return
            if answer is not None or self.proc.poll() is not None:
                break
        raise RuntimeError(f"the session's interpreter did not start: {sink.text()[-500:]!r}")

    # --- one request ----------------------------------------------------------------------------

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        cap = int(request["max_output_bytes"])
        timeout_s = float(request["timeout_s"])
        out, err = Capture(cap), Capture(cap)
        for capture, pending in ((out, self.pending[self.stdout_fd]), (err, self.pending[self.stderr_fd])):
            capture.add(bytes(pending.data))
            capture.truncated = capture.truncated or pending.truncated
        self.pending = {self.stdout_fd: Capture(MAX_PENDING_BYTES), self.stderr_fd: Capture(MAX_PENDING_BYTES)}
        captures = {self.stdout_fd: out, self.stderr_fd: err}
        self.answer.clear()  # anything before the request is no answer to it
        data = json.dumps({"code": request["code"]}).encode("utf-8")
        payload = memoryview(HEADER.pack(len(data)) + data)
        started = time.monotonic()
        deadline = started + timeout_s
        status: str | None = None
        ended: str | None = None
        note = ""
        while True:
            now = time.monotonic()
            if now >= deadline:
                status, ended = "timeout", "timeout"
                note = (f"TimeoutError: the execute ran past its {timeout_s:g} s limit; the session was killed "
                        "and has ended")
                break
            poll_s = sup.POLL_S if now - started < sup.FAST_POLL_FOR_S else sup.SLOW_POLL_S
            writers = [self.request_w] if payload else []
            ready, writable, _ = select.select(list(self.open_fds), writers, [], min(poll_s, deadline - now))
            if writable:
                try:
                    payload = payload[os.write(self.request_w, payload):]
                except BlockingIOError:
                    pass
                except OSError:  # the interpreter closed its end: it will not answer
                    payload = memoryview(b"")
            for fd in ready:
                self._read(fd, captures.get(fd))
            answer = self._answer()
            if isinstance(answer, dict):
                status = "success" if answer.get("ok") is True else "runtime_error"
                break
            if isinstance(answer, str):
                status, ended = "runtime_error", "protocol_error"
                note = f"the session's interpreter sent {answer}; the session has ended"
                break
            if self.proc.poll() is not None:
                status, ended, note = self._exited()
                break
            if sup._run_rss() + sup._tmpfs_used() > self.memory_budget:
                status, ended = "runtime_error", "memory_exceeded"
                note = (f"MemoryError: the session went over its memory limit ({self.limits['memory_mb']} MB); "
                        "the session has ended")
                break
        duration_s = time.monotonic() - started
        if ended is None:
            for fd, capture in captures.items():  # written before the answer: in the pipes already
                self._read(fd, capture)
        else:
            self.end()
            for fd, capture in captures.items():
                self._drain(fd, capture)
        if note:
            err.data.extend((("\n" if err.data and not err.data.endswith(b"\n") else "") + note + "\n").encode())
        return {"status": status, "stdout": out.text(), "stderr": err.text(), "duration_s": round(duration_s, 6),
                "truncated": out.truncated or err.truncated, "ended": ended}

    def _exited(self) -> tuple[str, str, str]:
        code = self.proc.returncode
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the interpreter is reaped: counted in
        used_s = children.ru_utime + children.ru_stime
        # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one (a second later)
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and used_s >= float(self.limits["cpu_s"]) - 0.1):
            return "timeout", "cpu_limit", (f"the session used up its CPU time ({self.limits['cpu_s']} s); "
                                            "the session has ended")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return "runtime_error", "exited", f"the session's interpreter {how}; the session has ended"

    def _drain(self, fd: int, capture: Capture) -> None:
        """Every writer is dead: read to the end (bounded: without a PID namespace, in the weak mode,
        a process that left its group may still hold the pipe)."""
        deadline = time.monotonic() + DRAIN_S
        while fd in self.open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                self._read(fd, capture)
        self.open_fds.discard(fd)

    # --- between requests -----------------------------------------------------------------------

    def idle_check(self, readable: list[int]) -> str | None:
        """Between requests: keep what is printed, drop unasked-for answers; why the session must end."""
        for fd in readable:
            if fd == self.answer_r:
                self._read(fd, None)
                self.answer.clear()
            elif fd in self.pending:
                self._read(fd, self.pending[fd])
        if self.proc.poll() is not None:
            return self._exited()[1]
        if sup._run_rss() + sup._tmpfs_used() > self.memory_budget:
            return "memory_exceeded"
        return None

    def end(self) -> None:
        """Kill the interpreter and everything it started, and reap them all."""
        sup._signal_others()
        self.proc.wait()
        sup._reap_others()


def serve(session: Session) -> str:
    """Answer the service's requests until the session ends; returns why it ended."""
    write_frame(1, {"ready": True})
    while True:
        readers = [0, *session.open_fds]
        readable, _, _ = select.select(readers, [], [], IDLE_POLL_S)
        if 0 in readable:
            request = read_frame(0)
            if request is None or request.get("op") == "close":
                session.end()
                if request is not None:
                    write_frame(1, {"closed": True})
                return "closed"
            result = session.execute(request)
            write_frame(1, result)
            if result["ended"]:
                return str(result["ended"])
            continue
        reason = session.idle_check([fd for fd in readable if fd != 0])
        if reason is not None:
            session.end()
            return reason


def main() -> None:
    sup._make_non_dumpable()
    sup._ignore_signals()
    reason = "exited"
    try:
        job = read_frame(0)
        if job is None:
            return
        sup._SECCOMP = sup.SeccompPrograms(list(job.get("seccomp") or []))
        os.makedirs(sup.WORK_DIR, exist_ok=True)
        os.chdir(sup.WORK_DIR)
        session = Session(job)
        session.wait_ready()
        reason = serve(session)
    except BaseException as exc:  # a fault of the sandbox itself, reported as such
        with contextlib.suppress(OSError):
            write_frame(1, {"error": f"session supervisor: {type(exc).__name__}: {exc}"[:2000]})
        sys.exit(1)
    finally:
        sup._kill_others()
    sys.exit(EXIT_CODES.get(reason, 1))


if __name__ == "__main__":
    main()

"""Run untrusted Python in a contained child process.

Layers, strongest first:

1. **Unprivileged user.** When the service runs as root, the child drops to ``nobody``
   (uid/gid 65534) before exec: it cannot read the service's files, ``/root``, or
   ``/proc/<service pid>/environ`` (where secrets such as ``DATABASE_URL`` live), and most of
   the filesystem is read-only to it. Its working dir is a fresh temp dir chowned to it.
2. **No network.** As root the child enters a new, empty network namespace
   (``unshare(CLONE_NEWNET)`` in the child, the same as ``unshare --net``): no interface but a
   down loopback, so every connect fails. Where that is not permitted (not root, or a container
   without CAP_SYS_ADMIN) only layer 5's audit hook stands between the code and the network.
3. **Resource limits** (``setrlimit`` in the child): CPU seconds, address space (memory),
   file size, processes (fork bombs), open files, no core dumps.
4. **Wall clock.** The child leads its own session; at the deadline the whole process group is
   SIGKILLed, and again after a normal exit to reap any background children. The child also
   gets SIGKILL if the thread that started it dies (``PR_SET_PDEATHSIG``), so a grader worker
   killed by the pool does not leave sandboxes behind.
5. **Bootstrap** (always): the interpreter runs ``-I`` (isolated: no PYTHON* variables, no
   user site) with a tiny bootstrap that installs a ``sys.addaudithook`` rejecting
   ``socket.connect``/``bind``/``sendto``/``sendmsg`` and opening another process's
   ``/proc/<pid>`` files, then execs the user code. Audit hooks are a speed bump, not a wall
   (ctypes can get around them); layers 1-4 are the containment.

The child's environment is only ``PATH`` and ``LANG``. Known gaps: as ``nobody`` the code can
still write world-writable dirs (``/tmp``, ``/dev/shm``) and a grandchild that calls
``setsid`` escapes the group kill (it stays bound by RLIMIT_CPU/NPROC). RLIMIT_NPROC counts
all processes of ``nobody``, so many concurrent fork-heavy runs share one budget.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

SandboxStatus = Literal["success", "timeout", "runtime_error", "memory_exceeded", "sandbox_error"]

NOBODY_UID = 65534
NOBODY_GID = 65534
MAX_PROCESSES = 32
MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 16 * 1024 * 1024
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
CODE_FILENAME = "solution.py"
REAP_WAIT_S = 2.0

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1

# Runs as `python -I -c BOOTSTRAP solution.py`. Kept short: it is the first thing the child executes.
BOOTSTRAP = r"""
import os, sys
def _sandbox_hook(event, args, _pid=str(os.getpid()), _fs=os.fsdecode, _real=os.path.realpath):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
        raise PermissionError(f"network access is disabled in the sandbox ({event})")
    if event == "open" and isinstance(args[0], (str, bytes)):
        parts = _real(_fs(args[0])).split("/")
        if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != _pid:
            raise PermissionError("reading other processes is disabled in the sandbox")
sys.addaudithook(_sandbox_hook)
del _sandbox_hook
_path = sys.argv[1]
sys.argv = [_path]
sys.path.insert(0, os.getcwd())
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
del _f, _path
exec(_code, {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxResult:
    status: SandboxStatus
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool
    files: dict[str, bytes] = field(default_factory=dict)  # the requested ``fetch_files`` that exist


@dataclass(frozen=True)
class _Plan:
    """How the child is started on this host (decided once per process)."""

    interpreter: str | None
    drop_to_nobody: bool
    isolate_network: bool


def run_python(code: str, *, stdin: str = "", timeout_s: float, memory_mb: int,
               files: dict[str, str | bytes] | None = None, max_output_bytes: int = 64_000,
               fetch_files: Sequence[str] = ()) -> SandboxResult:
    """Run ``code`` as a Python program in a fresh temp dir under the limits above.

    ``files`` are written into the dir first (name -> content); ``fetch_files`` are read back
    from it afterwards (missing, oversized or escaping ones are left out).
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError("timeout_s and memory_mb must be positive")
    plan = _plan()
    if plan.interpreter is None:
        return _sandbox_error("no Python interpreter the sandbox user can execute", 0.0)
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="rewardhub-sandbox-"))
    started = time.monotonic()
    try:
        _populate(workdir, code, files or {}, plan.drop_to_nobody)
        result = _execute(plan, workdir, stdin, timeout_s, memory_mb, max_output_bytes, started)
        return replace(result, files=_fetch(workdir, fetch_files)) if fetch_files else result
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return _sandbox_error(f"{type(exc).__name__}: {exc}", time.monotonic() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _sandbox_error(reason: str, wall_s: float) -> SandboxResult:
    return SandboxResult(status="sandbox_error", exit_code=None, stdout="", stderr=reason[:2000],
                         wall_s=wall_s, truncated=False)


def _populate(workdir: str, code: str, files: dict[str, str | bytes], chown: bool) -> None:
    """Write the program and the caller's files into the workdir, owned by the sandbox user."""
    entries: dict[str, str | bytes] = {**files, CODE_FILENAME: code}
    for name, content in entries.items():
        target = os.path.realpath(os.path.join(workdir, name))
        if not target.startswith(workdir + os.sep):
            raise ValueError(f"file name {name!r} leaves the sandbox directory")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
    if chown:
        for root, dirs, names in os.walk(workdir):
            for entry in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, n) for n in names)]:
                os.chown(entry, NOBODY_UID, NOBODY_GID)
    os.chmod(workdir, 0o700)


def _fetch(workdir: str, names: Sequence[str]) -> dict[str, bytes]:
    """Read back files the program wrote, never following a link out of the workdir.

    The program is dead by now; it may still have planted symlinks (to ``/etc/shadow``, say),
    which we, possibly root, must not read for it.
    """
    fetched: dict[str, bytes] = {}
    for name in names:
        target = os.path.realpath(os.path.join(workdir, name))
        if not target.startswith(workdir + os.sep):
            continue
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as handle:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                content = handle.read(MAX_FILE_BYTES + 1)
                if len(content) <= MAX_FILE_BYTES:
                    fetched[name] = content
    return fetched


def _execute(plan: _Plan, workdir: str, stdin: str, timeout_s: float, memory_mb: int,
             max_output_bytes: int, started: float) -> SandboxResult:
    assert plan.interpreter is not None
    argv = [plan.interpreter, "-I", "-c", BOOTSTRAP, CODE_FILENAME]
    env = {"PATH": CHILD_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    preexec = functools.partial(_limit_child, timeout_s=timeout_s, memory_mb=memory_mb,
                                drop_to_nobody=plan.drop_to_nobody, isolate_network=plan.isolate_network)
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write(stdin.encode())
        stdin_file.seek(0)
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=stdin_file, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                                close_fds=True)
        try:
            stdout, stderr, truncated, timed_out = _collect(proc, started + timeout_s, max_output_bytes)
        finally:
            _kill_group(proc)
    wall_s = time.monotonic() - started
    exit_code = proc.returncode
    out, err = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
    status = _classify(exit_code, err, timed_out)
    return SandboxResult(status=status, exit_code=None if timed_out else exit_code, stdout=out, stderr=err,
                         wall_s=wall_s, truncated=truncated)


def _collect(proc: subprocess.Popen[bytes], deadline: float, cap: int) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until EOF or the deadline, keeping at most ``cap`` bytes of each.

    Output past the cap is read and dropped, so a chatty child neither blocks nor grows our memory.
    """
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = False
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(buffers[out_fd]), bytes(buffers[err_fd]), truncated, True
            if proc.poll() is not None:
                # The program is done; background children may still hold the pipes open.
                _signal_group(proc)
            for key, _ in selector.select(timeout=min(remaining, 0.25)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffer = buffers[key.fd]
                room = cap - len(buffer)
                if len(chunk) > room:
                    truncated = True
                buffer.extend(chunk[:max(room, 0)])
    remaining = max(deadline - time.monotonic(), 0.0)
    try:
        proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        return bytes(buffers[out_fd]), bytes(buffers[err_fd]), truncated, True
    return bytes(buffers[out_fd]), bytes(buffers[err_fd]), truncated, False


def _signal_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the group and wait (bounded) until it is gone, so its processes stop counting
    against the sandbox user's RLIMIT_NPROC before the next run starts."""
    _signal_group(proc)
    proc.wait()
    deadline = time.monotonic() + REAP_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.005)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _classify(exit_code: int | None, stderr: str, timed_out: bool) -> SandboxStatus:
    if timed_out or exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"  # SIGXCPU/SIGKILL from RLIMIT_CPU: out of CPU seconds
    if exit_code == 0:
        return "success"
    last_line = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if last_line.startswith("MemoryError") or "Cannot allocate memory" in last_line:
        return "memory_exceeded"
    return "runtime_error"


def _limit_child(*, timeout_s: float, memory_mb: int, drop_to_nobody: bool, isolate_network: bool) -> None:
    """Runs in the forked child before exec: only async-signal-tolerant work, no imports."""
    if isolate_network and _LIBC is not None and _LIBC.unshare(_CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
    cpu_s = math.ceil(timeout_s) + 1
    memory_bytes = memory_mb * 1024 * 1024
    limits = {
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
        resource.RLIMIT_AS: (memory_bytes, memory_bytes),
        resource.RLIMIT_FSIZE: (MAX_FILE_BYTES, MAX_FILE_BYTES),
        resource.RLIMIT_NPROC: (MAX_PROCESSES, MAX_PROCESSES),
        resource.RLIMIT_NOFILE: (MAX_OPEN_FILES, MAX_OPEN_FILES),
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, limit in limits.items():
        resource.setrlimit(which, limit)
    if drop_to_nobody:
        os.setgroups([])
        os.setgid(NOBODY_GID)
        os.setuid(NOBODY_UID)
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # set after setuid: it clears it


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


_LIBC = _load_libc()  # loaded in the parent: the child must not load libraries between fork and exec


@functools.cache
def _plan() -> _Plan:
    root = os.geteuid() == 0
    interpreter = _interpreter(for_nobody=root)
    return _Plan(interpreter=interpreter, drop_to_nobody=root,
                 isolate_network=root and _LIBC is not None and _can_unshare_network())


def _interpreter(*, for_nobody: bool) -> str | None:
    """``sys.executable`` when the sandbox user may run it, else a system ``python3``.

    A venv under ``/root`` (mode 0700) is not executable by ``nobody``; the system interpreter
    then runs the code, without the venv's packages.
    """
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and (not for_nobody or _world_executable(candidate)):
            return candidate
    return None


def _world_executable(path: str) -> bool:
    """Can a user with no ownership or group match execute ``path`` (every directory searchable)?"""
    real = os.path.realpath(path)
    if not os.stat(real).st_mode & stat.S_IXOTH:
        return False
    directory = os.path.dirname(real)
    while True:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(directory)
        if parent == directory:
            return True
        directory = parent


def _can_unshare_network() -> bool:
    """Probe once: may a child of ours enter a new network namespace (root without CAP_SYS_ADMIN may not)?"""
    assert _LIBC is not None
    libc = _LIBC

    def enter() -> None:
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")

    try:
        return subprocess.run(["true"], preexec_fn=enter, check=False, timeout=10,
                              env={"PATH": CHILD_PATH}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False

"""The run's supervisor: PID 1 of the sandbox's PID namespace, the only trusted process in it.

It is started by the sandbox service as ``python3 -I supervisor.py`` inside bubblewrap (or, where
user namespaces are unavailable, directly: see ``services/sandbox/isolation.py``). It reads one
JSON job on stdin, runs the untrusted program(s) as its children, and writes one JSON result on
stdout, which only it holds:

- it makes itself non-dumpable first, so a child of the same uid can neither ptrace it nor open
  ``/proc/1/fd/*`` or ``/proc/1/mem`` (its stdin holds the job, its stdout is the result channel);
- as PID 1 of the namespace it cannot be killed from inside (the kernel drops signals to a
  namespace's init that it has no handler for), and ``kill(-1, SIGKILL)`` from it ends every other
  process of the run: no daemon outlives the run;
- children get fresh pipes for their output, which it reads (capped; the rest is read and dropped)
  while watching wall time and the run's memory: the resident sets of every process it sees in
  ``/proc`` (each is one of the run's) plus the files in the run's tmpfs mounts;
- each child gets the job's seccomp programs stacked on the run's own filter (``seccomp.py`` in
  the service builds them): what the supervisor may still do, such as ``memfd_create``, its
  children may not.

Modes:

- ``run``: optional compile command, then the run command (SandboxFusion's one-shot runs).
- ``tests``: Python tests against a solution. Each test is a fresh interpreter running
  ``evaluator.py``: it loads the solution, then the test program, in which every ``assert`` was
  rewritten (outside the sandbox) into ``__rh_check__(site, *probes)``; the probes' values come back
  on a report pipe and *this* process evaluates each assert from them and the literals it alone
  holds. An exit, a kill or a crash before the end is a failure of that test, and code that writes
  to the report pipe itself still has to produce the right values without seeing them.

Standard library only: it runs under the sandbox's interpreter, not the service's.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import ctypes
import json
import math
import operator
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import time
from typing import Any

WORK_DIR = os.environ.get("RH_WORK_DIR", "/work")
HERE = os.path.dirname(os.path.abspath(__file__))
EVALUATOR = os.path.join(HERE, "evaluator.py")
POLL_S = 0.02
# After the first second a run is a long one: its limits are checked every 50 ms instead (a hundred
# busy runs' supervisors polling at 50 Hz took about a third of a 2-core host at nice 0, which
# delayed other runs' start and end). Output still wakes the loop at once; RLIMIT_AS and the
# tmpfs caps bound what a run can take between two checks.
SLOW_POLL_S = 0.05
FAST_POLL_FOR_S = 1.0
# nice 19 weighs 1/68 of nice 0: a hundred busy runs together weigh about one and a half service
# processes, so health checks and other runs' start-up are not starved (see _limiter).
MAX_REPORT_BYTES = 4 * 1024 * 1024
RUN_NICENESS = 19
_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
TMPFS_MOUNTS = (WORK_DIR, "/tmp", "/dev/shm")  # the run's writable mounts (tmpfs in the namespaces mode)


def main() -> None:
    started_at = time.monotonic()
    _make_non_dumpable()
    _ignore_signals()
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    result: dict[str, Any]
    global _SECCOMP
    try:
        _SECCOMP = SeccompPrograms(list(job.get("seccomp") or []))
        os.makedirs(WORK_DIR, exist_ok=True)
        os.chdir(WORK_DIR)
        _write_files(job.get("files") or {})
        result = run_tests(job) if job["mode"] == "tests" else run_program(job)
    except BaseException as exc:  # a fault of the sandbox itself, reported as such
        result = {"error": f"supervisor: {type(exc).__name__}: {exc}"[:2000]}
    finally:
        _kill_others()
    usage = resource.getrusage(resource.RUSAGE_SELF)  # its own overhead, for the benchmarks
    result["supervisor"] = {"started_at": round(started_at, 6), "cpu_s": round(usage.ru_utime + usage.ru_stime, 6)}
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


def _ignore_signals() -> None:
    """PID 1 gets only the signals it handles; Python handles SIGINT itself, so a run's
    ``kill(1, SIGINT)`` would raise KeyboardInterrupt here. Ignore every catchable signal but SIGCHLD."""
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_IGN)


def _make_non_dumpable() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _write_files(files: dict[str, str]) -> None:
    """Write the job's files (names already checked by the service: relative, no ``..``)."""
    for name, content in files.items():
        target = os.path.join(WORK_DIR, name)
        parent = os.path.dirname(target)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(base64.b64decode(content))


# --- running one child under limits -------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: a classic-BPF program for ``PR_SET_SECCOMP``."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompPrograms:
    """The job's seccomp programs, made ready before any fork: a preexec_fn must not allocate much."""

    def __init__(self, encoded: list[str]) -> None:
        self._buffers = [ctypes.create_string_buffer(base64.b64decode(text)) for text in encoded]
        self._programs = []
        for buffer in self._buffers:
            program = _SockFprog()
            program.len = (len(buffer) - 1) // 8  # create_string_buffer adds a NUL
            program.filter = ctypes.addressof(buffer)
            self._programs.append(program)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def load(self) -> None:
        """In the child: stack every program on top of the run's own filter (fail closed)."""
        if not self._programs:
            return
        if self._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # bwrap set it; the weak mode has not
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        for program in self._programs:
            if self._libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


_SECCOMP = SeccompPrograms([])


def _limiter(limits: dict[str, int]) -> Any:
    """preexec_fn: the child's own rlimits (NPROC counts per user namespace, so per run) and the
    job's seccomp programs, loaded last (after them the child may no longer call memfd_create)."""

    def apply() -> None:
        for number in range(1, signal.NSIG):  # the supervisor ignores signals; its children must not
            if number not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(number, signal.SIG_DFL)
        cpu = int(limits["cpu_s"])
        address_space = int(limits.get("address_space_mb", 0)) * 1024 * 1024
        if address_space:  # 0: bounded by the run's resident-memory budget only (V8 reserves far more)
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                             (resource.RLIMIT_FSIZE, (int(limits["file_mb"]) * 1024 * 1024,) * 2),
                             (resource.RLIMIT_NPROC, (int(limits["processes"]),) * 2),
                             (resource.RLIMIT_NOFILE, (int(limits["open_files"]),) * 2),
                             (resource.RLIMIT_CORE, (0, 0))):
            resource.setrlimit(which, value)
        # Its own process group, to be killed whole; not its own session: with autogroup scheduling
        # a session is a scheduling group, and niceness only ranks processes within one. So the tested
        # code yields the CPU to the service's health checks and to other runs' start-up.
        os.setpgid(0, 0)
        os.setpriority(os.PRIO_PROCESS, 0, RUN_NICENESS)
        _SECCOMP.load()

    return apply


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("stdin", 0)
    os.write(fd, data) if len(data) < 65536 else _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Outcome:
    """What one child did: how it ended, what it printed, what it reported."""

    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.timed_out = False
        self.memory_exceeded = False
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self.report = bytearray()
        self.wall_s = 0.0
        self.started_at = 0.0  # CLOCK_MONOTONIC is the host's (no time namespace): the service can compare

    @property
    def signal(self) -> int | None:
        return -self.exit_code if self.exit_code is not None and self.exit_code < 0 else None


def run_child(argv: list[str], *, stdin: bytes, timeout_s: float, limits: dict[str, int],
              output_bytes: int, report: bool = False, on_report: Any = None,
              extra_fds: tuple[int, ...] = ()) -> Outcome:
    """Run ``argv`` to its end or its wall-clock limit, then end every other process of the run."""
    outcome = Outcome()
    stdin_fd = _memfd(stdin)
    report_r = report_w = -1
    pass_fds: tuple[int, ...] = extra_fds
    if report:
        report_r, report_w = os.pipe()
        pass_fds = (*extra_fds, report_w)
    started = outcome.started_at = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*argv, *([str(report_w)] if report else [])], stdin=stdin_fd, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=WORK_DIR, close_fds=True, pass_fds=pass_fds,
            preexec_fn=_limiter(limits), env=_child_env())
    finally:
        os.close(stdin_fd)
        if report:
            os.close(report_w)
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): outcome.stdout, proc.stderr.fileno(): outcome.stderr}
    if report:
        streams[report_r] = outcome.report
    deadline = started + timeout_s
    memory_budget = limits["memory_mb"] * 1024 * 1024
    open_fds = set(streams)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome.timed_out = True
            break
        poll_s = POLL_S if time.monotonic() - started < FAST_POLL_FOR_S else SLOW_POLL_S
        ready, _, _ = select.select(list(open_fds), [], [], min(poll_s, remaining)) if open_fds else ([], [], [])
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            _keep(outcome, streams[fd], chunk, MAX_REPORT_BYTES if fd == report_r else output_bytes)
            if fd == report_r and on_report is not None and on_report(outcome.report):
                _signal_others()  # a failed check decides the test; nothing it does next matters
        if proc.poll() is not None:
            break
        if not open_fds:
            time.sleep(min(poll_s, remaining))
        if _run_rss() + _tmpfs_used() > memory_budget:
            outcome.memory_exceeded = True
            break
    outcome.wall_s = time.monotonic() - started
    _signal_others()
    proc.wait()  # before reaping the rest, so its own exit status is the one kept
    outcome.exit_code = proc.returncode
    _reap_others()
    _drain(streams, open_fds, outcome, output_bytes, report_r)
    for fd in streams:
        with contextlib.suppress(OSError):
            os.close(fd)
    return outcome


def _keep(outcome: Outcome, buffer: bytearray, chunk: bytes, cap: int) -> None:
    room = cap - len(buffer)
    if len(chunk) > room:
        outcome.truncated = True
    if room > 0:
        buffer.extend(chunk[:room])


def _drain(streams: dict[int, bytearray], open_fds: set[int], outcome: Outcome, cap: int, report_r: int) -> None:
    """Every writer is dead now: read what is left in the pipes up to EOF."""
    for fd in list(open_fds):
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            _keep(outcome, streams[fd], chunk, MAX_REPORT_BYTES if fd == report_r else cap)


def _child_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORK_DIR, "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def _kill_others() -> None:
    _signal_others()
    _reap_others()


def _signal_others() -> None:
    """As PID 1 of the namespace: SIGKILL every other process of the run (daemons included)."""
    if os.getpid() == 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(-1, signal.SIGKILL)
    else:  # no PID namespace (weak isolation): each child leads its own session; kill those groups
        for pid in _own_children():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _reap_others() -> None:
    """Collect every exited child (orphans are re-parented to PID 1), so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if os.getpid() != 1:
                return
            time.sleep(0.001)


def _own_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
                if fields[1] == me:
                    found.append(int(entry))
    return found


def _run_rss() -> int:
    """Resident bytes of every process this supervisor can see but itself (in a PID namespace: the run)."""
    if os.getpid() != 1:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != "1":
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/statm") as handle:
                total += int(handle.read().split()[1]) * page
    return total


def _tmpfs_used() -> int:
    """Bytes of files in the run's tmpfs mounts: host memory that no process's resident set shows
    (each mount's size cap bounds it between two polls). Zero without a PID namespace, where these
    are the host's directories."""
    if os.getpid() != 1:
        return 0
    total = 0
    for mount in TMPFS_MOUNTS:
        with contextlib.suppress(OSError):
            info = os.statvfs(mount)
            total += (info.f_blocks - info.f_bfree) * info.f_frsize
    return total


def _describe(outcome: Outcome) -> dict[str, Any]:
    return {"exit_code": outcome.exit_code, "signal": outcome.signal, "timed_out": outcome.timed_out,
            "memory_exceeded": outcome.memory_exceeded, "wall_s": round(outcome.wall_s, 6),
            "started_at": round(outcome.started_at, 6),
            "stdout": base64.b64encode(bytes(outcome.stdout)).decode(),
            "stderr": base64.b64encode(bytes(outcome.stderr)).decode(), "truncated": outcome.truncated}


# --- mode "run": compile (optional) and run -----------------------------------------------------


def run_program(job: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, int] = job["limits"]
    output_bytes = int(job.get("output_bytes", 65536))
    result: dict[str, Any] = {}
    compile_step = job.get("compile")
    if isinstance(compile_step, dict):
        compiled = run_child(compile_step["argv"], stdin=b"", timeout_s=float(compile_step["timeout_s"]),
                             limits={**limits, **compile_step.get("limits", {})}, output_bytes=output_bytes)
        result["compile"] = _describe(compiled)
        if compiled.timed_out or compiled.exit_code != 0:
            return result
    run_step: dict[str, Any] = job["run"]
    stdin = base64.b64decode(str(run_step.get("stdin", "")))
    ran = run_child(list(run_step["argv"]), stdin=stdin, timeout_s=float(run_step["timeout_s"]),
                    limits=limits, output_bytes=output_bytes)
    result["run"] = _describe(ran)
    result["files"] = _fetch(list(job.get("fetch_files") or []), int(limits["file_mb"]) * 1024 * 1024)
    return result


MAX_FETCH_TOTAL_BYTES = 64 * 1024 * 1024


def _fetch(names: list[str], cap: int) -> dict[str, Any]:
    """Read back the requested files (regular files only, never following a link), each file once
    (``big`` and ``./big`` are one inode) and at most ``MAX_FETCH_TOTAL_BYTES`` in all."""
    fetched: dict[str, Any] = {}
    seen: set[tuple[int, int]] = set()
    total = 0
    for name in names:
        path = name if os.path.isabs(name) else os.path.join(WORK_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            fetched[name] = {"error": exc.strerror or type(exc).__name__}
            continue
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                fetched[name] = {"error": "not a regular file"}
                continue
            if (info.st_dev, info.st_ino) in seen:
                fetched[name] = {"error": "the same file as another name in fetch_files"}
                continue
            seen.add((info.st_dev, info.st_ino))
            content = handle.read(min(cap, MAX_FETCH_TOTAL_BYTES - total) + 1)
        if len(content) > cap or total + len(content) > MAX_FETCH_TOTAL_BYTES:
            fetched[name] = {"error": "file too large"}
            continue
        total += len(content)
        fetched[name] = {"content": base64.b64encode(content).decode()}
    return fetched


# --- mode "tests": Python tests whose verdicts are decided here -----------------------------------


def run_tests(job: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, int] = job["limits"]
    python: str = job["python"]
    timeout_s = float(job["timeout_s"])
    budget_ends = time.monotonic() + float(job["budget_s"])
    output_bytes = int(job.get("output_bytes", 65536))
    results = []
    for index, test in enumerate(job["tests"]):
        if time.monotonic() >= budget_ends:
            results.append({"status": "not_run"})
            continue
        if test["kind"] == "stdio":
            ran = run_child([python, "-E", "-s", "solution.py"], stdin=test["stdin"].encode(),
                            timeout_s=timeout_s, limits=limits, output_bytes=output_bytes)
            results.append({"status": _ended(ran) or "finished", **_describe(ran)})
            continue
        # An assert test's output is only shown as an excerpt: keep little of it.
        results.append(_assert_test(python, index, test, timeout_s, limits, min(output_bytes, 8192)))
    return {"tests": results}


def _ended(outcome: Outcome) -> str | None:
    """How a child ended, when that alone decides its test (None: it exited by itself)."""
    if outcome.memory_exceeded:
        return "memory_exceeded"
    if outcome.timed_out or outcome.signal in (signal.SIGXCPU,):
        return "timeout"
    return None


def _assert_test(python: str, index: int, test: dict[str, Any], timeout_s: float, limits: dict[str, int],
                 output_bytes: int) -> dict[str, Any]:
    # The test program travels on a descriptor of its own: a file in /work could be replaced by the
    # previous test's code (a directory or a link in its place would fault the whole request).
    program_fd = _memfd(str(test["program"]).encode("utf-8"))
    sites: dict[str, Any] = test["sites"]
    checker = SiteChecker(sites)
    try:
        ran = run_child([python, "-I", EVALUATOR, "solution.py", str(program_fd)], stdin=b"",
                        timeout_s=timeout_s, limits=limits, output_bytes=output_bytes, report=True,
                        on_report=checker.feed, extra_fds=(program_fd,))
    finally:
        os.close(program_fd)
    checker.feed(ran.report, final=True)
    described = _describe(ran)
    if checker.failure is not None:
        return {"status": "failed", "reason": checker.failure, **described}
    ended = _ended(ran)
    if ended is not None:
        return {"status": ended, **described}
    if not checker.ended:
        return {"status": "failed", "reason": _early_end(ran), **described}
    missing = checker.unreached()
    if missing:
        return {"status": "failed", "reason": f"assert(s) at line(s) {', '.join(missing)} never ran", **described}
    return {"status": "passed", **described}


def _early_end(outcome: Outcome) -> str:
    if outcome.signal is not None:
        return f"the program was killed by signal {outcome.signal} before the test ended"
    return f"the program exited (code {outcome.exit_code}) before the test ended"


class SiteChecker:
    """Decides each rewritten assert from the probe values the test process reports.

    A site is a tree (``services/sandbox/asserts.py`` builds it): ``lit`` (a literal, held only
    here), ``probe`` (the i-th value reported for the site), ``truth``, ``not``, ``cmp``, ``bin``,
    ``unary`` and ``call`` (a few built-ins). Reported values are plain data (``repr`` read back
    with ``ast.literal_eval``; ``null`` for anything else fails the assert), so no object of the
    solution's takes part in a verdict made here.
    """

    def __init__(self, sites: dict[str, Any]) -> None:
        self.sites = sites
        self.hits: dict[str, int] = dict.fromkeys(sites, 0)
        self.failure: str | None = None
        self.ended = False
        self._consumed = 0

    def feed(self, buffer: bytearray, final: bool = False) -> bool:
        """Read the complete lines reported so far; True once a check has failed."""
        while self.failure is None:
            end = buffer.find(b"\n", self._consumed)
            if end < 0:
                break
            line = bytes(buffer[self._consumed:end])
            self._consumed = end + 1
            self._line(line)
        return self.failure is not None

    def _line(self, line: bytes) -> None:
        if self.ended:
            self.failure = "report after the end of the test"
            return
        try:
            message = json.loads(line)
        except ValueError:
            self.failure = "malformed report"
            return
        if message == {"end": True}:
            self.ended = True
            return
        site = str(message.get("site")) if isinstance(message, dict) else ""
        values = message.get("values") if isinstance(message, dict) else None
        if site not in self.sites or not isinstance(values, list):
            self.failure = "malformed report"
            return
        self.hits[site] += 1
        tree: dict[str, Any] = self.sites[site]
        try:
            holds = bool(self._evaluate(tree, values))
        except Exception:  # a value that cannot be read or compared fails its assert
            holds = False
        if not holds:
            self.failure = f"assert at line {tree.get('line', '?')} failed"

    def _evaluate(self, node: dict[str, Any], values: list[Any]) -> Any:
        op = node["op"]
        if op == "lit":
            return ast.literal_eval(str(node["value"]))
        if op == "probe":
            reported = values[int(node["index"])]
            if not isinstance(reported, str):
                raise ValueError("the value is not plain data")
            return ast.literal_eval(reported)
        if op == "truth":
            return bool(self._evaluate(node["arg"], values))
        if op == "not":
            return not self._evaluate(node["arg"], values)
        if op == "cmp":
            operands = [self._evaluate(o, values) for o in node["operands"]]
            return all(_compare(name, left, right)
                       for name, left, right in zip(node["ops"], operands, operands[1:], strict=False))
        if op == "bin":
            return _BINARY[node["kind"]](self._evaluate(node["left"], values), self._evaluate(node["right"], values))
        if op == "unary":
            operand = self._evaluate(node["arg"], values)
            return -operand if node["kind"] == "-" else +operand
        if op == "call":
            args = [self._evaluate(a, values) for a in node["args"]]
            kwargs = {k: self._evaluate(v, values) for k, v in node["kwargs"].items()}
            return _SAFE_FUNCTIONS[node["fn"]](*args, **kwargs)
        raise ValueError(f"unknown node {op!r}")

    def unreached(self) -> list[str]:
        """Lines of asserts with probes that never ran (one without probes, such as ``assert False``
        after a call that must raise, may rightly never run)."""
        return [str(self.sites[site].get("line", "?")) for site, hits in self.hits.items()
                if not hits and _has_probe(self.sites[site])]


def _has_probe(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("op") == "probe" or any(_has_probe(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_probe(value) for value in node)
    return False


_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_SAFE_FUNCTIONS: dict[str, Any] = {"abs": abs, "round": round, "len": len, "min": min, "max": max, "sum": sum, "sorted": sorted,
                   "list": list, "tuple": tuple, "set": set, "int": int, "float": float, "str": str, "bool": bool,
                   "math.isclose": math.isclose, "math.sqrt": math.sqrt, "math.floor": math.floor,
                   "math.ceil": math.ceil, "math.fabs": math.fabs}


def _compare(name: str, left: Any, right: Any) -> bool:
    if name == "is":
        return left is right  # only against None, True, False (asserts.py)
    if name == "is not":
        return left is not right
    if name == "==":
        return _equal(left, right)
    if name == "!=":
        return not _equal(left, right)
    if name == "in":
        return left in right
    if name == "not in":
        return left not in right
    return bool({"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                 ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[name](left, right))


def _equal(left: object, right: object) -> bool:
    """Python's ``==``, on plain data only (both sides came out of ``ast.literal_eval``)."""
    return left == right


if __name__ == "__main__":
    main()

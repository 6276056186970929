"""The attack suite: what a tenant's trainer key can make the sandbox do, with the services run as deployed.

gateway, verifier and sandbox run as separate processes, as an unprivileged uid (the Dockerfile's
and the chart's way) and again as root (the embedded default's way), on a real Postgres. Each
attack is submitted code — through the sandbox's `/run_code` (what the verifier's `/run_code` and
the code grader call), through the verifier's `/run_code`, and through `/v1/rewards` — and each
row asserts that it was contained, that the answer carries a status (never a silent score), and
that every service keeps answering `/healthz` throughout. The table is printed (pytest -s).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.nonroot import Service, ServiceDatabase, service_env

pytestmark = [pytest.mark.security, pytest.mark.slow]

LLM_CANARY = "sk-canary-llm-key-4f1d2a"
DAEMON_MARKER = "rh-daemon-marker-7c3e"
HTTP_TIMEOUT_S = 120.0


@dataclass
class Deployment:
    gateway: Service
    verifier: Service
    sandbox: Service
    trainer_key: str
    secrets: list[str]
    table: list[tuple[str, str, str]] = field(default_factory=list)

    def services(self) -> list[Service]:
        return [self.gateway, self.verifier, self.sandbox]


class HealthWatch:
    """Polls every service's /healthz from a thread while the attacks run; any miss is recorded."""

    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.misses: list[str] = []
        self.polls = 0
        self.worst_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(0.25):
                for service in self.services:
                    started = time.monotonic()
                    try:
                        ok = client.get(service.url + "/healthz").status_code == 200
                    except httpx.HTTPError as exc:
                        ok = False
                        self.misses.append(f"{service.name}: {type(exc).__name__}")
                    self.worst_s = max(self.worst_s, time.monotonic() - started)
                    self.polls += 1
                    if not ok and not self.misses:
                        self.misses.append(f"{service.name}: not 200")


@pytest.fixture(params=["postgres"], ids=["postgres"])
def deployment(request: pytest.FixtureRequest, service_user: str, start_service_as: Callable[..., Service],
               make_service_database: Callable[..., ServiceDatabase]) -> Iterator[Deployment]:
    from tests.security.nonroot import bootstrap_tenant

    database = make_service_database(request.param)
    runtime = request.getfixturevalue("nonroot_runtime")
    tenant = bootstrap_tenant(runtime, database)
    sandbox = start_service_as("sandbox", {"REWARDHUB_LOG_JSON": "false"}, ready_path="/readyz")
    env = service_env(database, REWARDHUB_LLM_API_KEY=LLM_CANARY, REWARDHUB_SANDBOX_URL=sandbox.url)
    verifier = start_service_as("verifier", env)
    gateway = start_service_as("gateway", {**env, "REWARDHUB_VERIFIER_URL": verifier.url})
    secrets = [env["REWARDHUB_SECRET_KEY"], LLM_CANARY]
    if "DATABASE_URL" in env:
        secrets.append(env["DATABASE_URL"].split("@")[-1])  # the host/db part: the URL in any form
    deployed = Deployment(gateway, verifier, sandbox, tenant.keys["trainer"], secrets)
    yield deployed
    print(f"\n== attack table (services as {service_user}) ==")
    for attack, contained, status in deployed.table:
        print(f"| {attack} | {contained} | {status} |")


def run_code(deployed: Deployment, code: str, *, via: str = "sandbox", **fields: Any) -> dict[str, Any]:
    body = {"code": code, "language": "python", "run_timeout": 10, **fields}
    if via == "sandbox":
        response = httpx.post(deployed.sandbox.url + "/run_code", json=body, timeout=HTTP_TIMEOUT_S)
    else:
        response = httpx.post(deployed.verifier.url + "/run_code", json=body, timeout=HTTP_TIMEOUT_S,
                              headers={"Authorization": f"Bearer {deployed.trainer_key}"})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert answer["status"] in ("Success", "Failed"), answer  # never a platform fault
    return answer


def output(answer: dict[str, Any]) -> str:
    run = answer.get("run_result") or {}
    return (run.get("stdout") or "") + (run.get("stderr") or "")


def assert_no_secret(deployed: Deployment, text: str) -> None:
    for secret in deployed.secrets:
        assert secret not in text, f"a secret reached the sandbox's output: {secret[:12]}…"


def record(deployed: Deployment, attack: str, answer: dict[str, Any]) -> None:
    run = answer.get("run_result") or {}
    status = f"{answer['status']} / {run.get('status')} rc={run.get('return_code')}"
    if "limit exceeded" in answer.get("message", ""):
        status += f" ({answer['message'].split(';')[0]})"
    deployed.table.append((attack, "contained", status))


def alive(service: Service) -> bool:
    return service.proc.poll() is None and httpx.get(service.url + "/healthz", timeout=10).status_code == 200


def host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


READ_PROCESSES = r'''
import os
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        for name in ("environ", "cmdline"):
            try:
                seen.append(open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace"))
            except OSError as exc:
                seen.append(f"{pid}/{name}: {exc}")
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("\n".join(seen))
print(open("/proc/self/environ").read())
'''

NETWORK = r'''
import socket
results = []
for host, port in [("127.0.0.1", {gateway}), ("127.0.0.1", {sandbox}), ("127.0.0.1", 5432), ("127.0.0.1", 6379),
                   ("10.0.0.1", 80), ("8.8.8.8", 53)]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        results.append(f"CONNECTED {{host}}:{{port}}")
    except OSError as exc:
        results.append(f"refused {{host}}:{{port}} {{exc.errno}}")
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("8.8.8.8", 53))
    results.append("UDP SENT")
except OSError as exc:
    results.append(f"udp refused {{exc.errno}}")
for path in ["/var/run/postgresql/.s.PGSQL.5432", "/run/postgresql/.s.PGSQL.5432", "/var/run/redis/redis.sock"]:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        results.append(f"UNIX CONNECTED {{path}}")
    except OSError as exc:
        results.append(f"unix refused {{path}} {{exc.errno}}")
print("\n".join(results))
'''

KILLER = r'''
import os, signal
for pid in [os.getppid(), 1, 0, -1] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
print("survived")
'''

DAEMON = rf'''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sh", ["/bin/sh", "-c", "sleep 60 # {DAEMON_MARKER}"])
    os._exit(0)
time.sleep(0.3)
print("daemon started")
'''

BOMBS = {
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "thread bomb": "import threading, time\nwhile True:\n    try:\n        threading.Thread(target=time.sleep, args=(60,)).start()\n"
                   "    except RuntimeError:\n        pass\n",
    "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n",
    "disk bomb": "import os\nfor d in ('/work', '/tmp', '/dev/shm'):\n    try:\n        with open(d + '/fill', 'wb') as f:\n"
                 "            while True:\n                f.write(b'x' * (1 << 20))\n    except OSError as exc:\n"
                 "        print(d, exc.errno)\n",
    "500 MB of stdout": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(500):\n    sys.stdout.write(chunk)\n",
}

ESCALATE = r'''
import ctypes, resource, os
libc = ctypes.CDLL(None, use_errno=True)
out = []
for which in (resource.RLIMIT_NPROC, resource.RLIMIT_AS, resource.RLIMIT_CPU):
    try:
        resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        out.append(f"RAISED {which}")
    except (ValueError, OSError) as exc:
        out.append(f"refused {which}")
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
out.append(f"unshare user -> {libc.unshare(CLONE_NEWUSER)} errno {ctypes.get_errno()}")
out.append(f"ptrace pid1 -> {libc.ptrace(16, 1, 0, 0)} errno {ctypes.get_errno()}")
out.append(f"mount -> {libc.mount(b'none', b'/usr', b'tmpfs', 0, None)} errno {ctypes.get_errno()}")
out.append(f"setuid0 -> {libc.setuid(0)}")
try:
    open("/usr/bin/planted", "w")
    out.append("WROTE /usr")
except OSError:
    out.append("usr read-only")
try:
    open("/proc/1/mem", "rb").read(1)
    out.append("READ PID1 MEM")
except OSError:
    out.append("pid1 mem refused")
print("\n".join(out))
'''

# Memory outside the resident sets: tmpfs files, memfd pages, shared anonymous mappings. Each runs
# at MEMORY_MB: the mounts are capped at half / a quarter / a quarter of it and count into it.
MEMORY_MB = 64
FILL = r'''
import os
written = 0
try:
    for n in range(10_000):
        with open(f"{directory}/fill{{n}}", "wb") as f:
            for _ in range(16):
                f.write(b"x" * (1 << 20))
                written += 1
except OSError as exc:
    print("refused after", written, "MiB errno", exc.errno, flush=True)
print("wrote", written, "MiB")
'''
FILL_ALL = r'''
import os, time
for directory in ("/work", "/tmp", "/dev/shm"):
    try:
        for n in range(10_000):
            with open(f"{directory}/fill{n}", "wb") as f:
                f.write(b"x" * (1 << 20))
    except OSError as exc:
        print(directory, "refused errno", exc.errno, flush=True)
time.sleep(5)  # holding the mounts full: the resident set plus these files is over the limit
print("SURVIVED")
'''
MEMFD = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for attempt in ("os", "ctypes"):
    try:
        fd = os.memfd_create("hold") if attempt == "os" else libc.syscall({memfd}, b"hold", 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "memfd_create")
        for _ in range(2 * {memory_mb}):
            os.write(fd, b"x" * (1 << 20))
        print("HELD", attempt)
    except OSError as exc:
        print("refused", attempt, exc.errno)
'''
SHARED_MAPPING = r'''
import mmap, os
try:
    one = mmap.mmap(-1, 2 * {memory_mb} << 20, mmap.MAP_SHARED)  # MAP_SHARED | MAP_ANONYMOUS
    one[::4096] = b"x" * len(one[::4096])
    print("MAPPED 2x the limit")
except OSError as exc:
    print("refused errno", exc.errno, flush=True)
# under the address-space limit per process, beyond the run's limit together
for _ in range(4):
    if os.fork() == 0:
        part = mmap.mmap(-1, ({memory_mb} // 2) << 20, mmap.MAP_SHARED)
        part[::4096] = b"x" * len(part[::4096])
        import time
        time.sleep(30)
        os._exit(0)
import time
time.sleep(30)
print("SURVIVED")
'''
SYSV = r'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for name, number, args in (("shmget", {shmget}, (0, 64 << 20, 0o1600)), ("msgget", {msgget}, (0, 0o1600))):
    result = libc.syscall(number, *args)
    print(name, "CREATED" if result >= 0 else f"refused {{ctypes.get_errno()}}")
'''


def _memory_attacks() -> dict[str, tuple[str, dict[str, Any]]]:
    from services.sandbox import seccomp

    numbers = {name: seccomp.syscall_number(name) for name in ("memfd_create", "shmget", "msgget")}
    return {
        "fill /tmp (tmpfs)": (FILL.format(directory="/tmp"), {}),
        "fill /dev/shm (tmpfs)": (FILL.format(directory="/dev/shm"), {}),
        "fill /work (tmpfs)": (FILL.format(directory="/work"), {}),
        "fill /work, /tmp and /dev/shm together and hold them": (FILL_ALL, {}),
        "memfd_create + write 2x the limit": (MEMFD.format(memfd=numbers["memfd_create"], memory_mb=MEMORY_MB), {}),
        "mmap MAP_SHARED|MAP_ANONYMOUS beyond the limit (1 and 4 processes)":
            (SHARED_MAPPING.format(memory_mb=MEMORY_MB), {}),
        "System V shm / message queue held after detach": (SYSV.format(**numbers), {}),
    }


# Each refused family, by number, from Python's ctypes: (call, arguments, errno the filter answers).
# Arguments are ones the kernel would accept, or refuse otherwise, without the filter.
SECCOMP_CALLS: list[tuple[str, tuple[Any, ...], str]] = [
    ("io_uring_setup", (8, 0), "ENOSYS"), ("io_uring_enter", (0, 0, 0, 0, 0, 0), "ENOSYS"),
    ("io_uring_register", (0, 0, 0, 0), "ENOSYS"), ("memfd_create", (b"x", 0), "EPERM"),
    ("memfd_secret", (0,), "EPERM"), ("userfaultfd", (1,), "EPERM"), ("bpf", (0, 0, 0), "EPERM"),
    ("perf_event_open", (0, 0, -1, -1, 0), "EPERM"), ("keyctl", (1, 0), "EPERM"),
    ("add_key", (b"user", b"rh", b"v", 1, -2), "EPERM"), ("request_key", (b"user", b"rh", 0, 0), "EPERM"),
    ("kexec_load", (0, 0, 0, 0), "EPERM"), ("kexec_file_load", (-1, -1, 0, 0, 0), "EPERM"),
    ("init_module", (0, 0, b""), "EPERM"), ("finit_module", (-1, b"", 0), "EPERM"),
    ("delete_module", (b"x", 0), "EPERM"), ("mount", (b"none", b"/tmp", b"tmpfs", 0, 0), "EPERM"),
    ("umount2", (b"/tmp", 0), "EPERM"), ("pivot_root", (b"/tmp", b"/tmp"), "EPERM"),
    ("open_tree", (-100, b"/tmp", 0), "EPERM"), ("move_mount", (-1, b"", -1, b"", 0), "EPERM"),
    ("fsopen", (b"tmpfs", 0), "EPERM"), ("fsmount", (-1, 0, 0), "EPERM"), ("fspick", (-100, b"/tmp", 0), "EPERM"),
    ("unshare", (0x00020000,), "EPERM"), ("setns", (-1, 0), "EPERM"),
    ("clone", (0x10000000 | 17, 0, 0, 0, 0), "EPERM"), ("clone", (0x40000000 | 17, 0, 0, 0, 0), "EPERM"),
    ("clone3", (0, 0), "ENOSYS"), ("ptrace", (0, 0, 0, 0), "EPERM"),
    ("process_vm_readv", (1, 0, 0, 0, 0, 0), "EPERM"), ("process_vm_writev", (1, 0, 0, 0, 0, 0), "EPERM"),
    ("personality", (0x0040000,), "EPERM"), ("personality", (0x0400000,), "EPERM"),
    ("acct", (0,), "EPERM"), ("swapon", (b"/tmp/swap", 0), "EPERM"), ("swapoff", (b"/tmp/swap",), "EPERM"),
    ("reboot", (0, 0, 0, 0), "EPERM"), ("ioperm", (0, 1, 1), "EPERM"), ("iopl", (3,), "EPERM"),
]
SECCOMP_PYTHON = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, number, args in {calls!r}:
    result = libc.syscall(number, *args)
    if result == 0 and name == "clone":
        os._exit(0)  # a clone the filter let through: the copy must not run on
    print(name, errno.errorcode.get(ctypes.get_errno(), "?") if result == -1 else f"ALLOWED {{result}}", flush=True)
print("x32 next", flush=True)
libc.syscall(0x40000000 | 39)  # getpid on the x32 ABI: the filter kills the process
print("X32 ALLOWED")
'''
SECCOMP_CPP = r'''
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unistd.h>
static void show(const char* name, long result) {{
  printf("%s %s\n", name, result == -1 ? strerrorname_np(errno) : "ALLOWED");
  fflush(stdout);
}}
int main() {{
{calls}
  printf("int80 next\n");
  fflush(stdout);
  long result;
  asm volatile("int $0x80" : "=a"(result) : "a"(20) : "memory");  // getpid, 32-bit ABI: killed
  printf("INT80 ALLOWED %ld\n", result);
}}
'''


def _seccomp_programs() -> tuple[str, str, list[str]]:
    """The ctypes program, the C++ program and the lines each must print, numbers resolved here."""
    from services.sandbox import seccomp

    calls = [(name, seccomp.syscall_number(name), args, expected) for name, args, expected in SECCOMP_CALLS]
    known = [(name, number, args, expected) for name, number, args, expected in calls if number is not None]
    python = SECCOMP_PYTHON.format(calls=[(name, number, args) for name, number, args, _ in known])

    def c_arg(value: Any) -> str:
        return '"' + value.decode() + '"' if isinstance(value, bytes) else f"{value}L"

    cpp_calls = "\n".join(f'  show("{name}", syscall({number}{"".join(", " + c_arg(a) for a in args)}));'
                           for name, number, args, _ in known if name != "clone")
    cpp = SECCOMP_CPP.format(calls=cpp_calls)
    return python, cpp, [f"{name} {expected}" for name, _, _, expected in known]


def test_attacks_are_contained(deployment: Deployment) -> None:
    deployed = deployment
    runs_before = _run_processes(deployed.sandbox.uid)
    with HealthWatch(deployed.services()) as health:
        # 1. Other processes' environment and command lines (the service's secrets).
        answer = run_code(deployed, READ_PROCESSES)
        assert_no_secret(deployed, output(answer))
        pids = json.loads(output(answer).split("pids ", 1)[1].split("\n", 1)[0])
        assert max(pids) < 10, f"the run sees processes beyond its own: {pids}"
        record(deployed, "read /proc/*/environ and cmdline of other processes", answer)

        # 2. The service's data dir, the SQLite file, host /tmp and other runs' work dirs.
        probe_paths = [str(deployed.verifier.data_dir), str(deployed.gateway.home), "/var/run/postgresql",
                       "/root", "/home", str(Path(deployed.verifier.log).parent)]
        code = f"import os\nfor p in {probe_paths!r}:\n    print(p, os.path.exists(p))\nprint(os.listdir('/tmp'), os.listdir('/'))"
        answer = run_code(deployed, code)
        assert all(line.endswith("False") for line in output(answer).splitlines()[:len(probe_paths)]), output(answer)
        record(deployed, "read the data dir, home, Postgres socket dir, other runs' dirs", answer)

        # 3. Another run's files while it is running.
        def planter() -> dict[str, Any]:
            return run_code(deployed, "open('/work/hidden-tests.txt','w').write('HIDDEN-TEST-CANARY')\n"
                                      "open('/tmp/hidden','w').write('HIDDEN-TEST-CANARY')\nimport time\ntime.sleep(4)")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            planted = pool.submit(planter)
            time.sleep(1.0)
            spy = run_code(deployed, "import os\nfor d in ('/work', '/tmp', '/dev/shm'):\n    for n in os.listdir(d):\n"
                                     "        print(open(os.path.join(d, n), errors='replace').read()[:100])")
            planted.result()
        assert "HIDDEN-TEST-CANARY" not in output(spy)
        record(deployed, "read a concurrent run's work dir and /tmp", spy)

        # 4. Network: TCP to the services, Postgres, Redis, outside; UDP; unix sockets.
        answer = run_code(deployed, NETWORK.format(gateway=deployed.gateway.port, sandbox=deployed.sandbox.port))
        assert "CONNECTED" not in output(answer) and "UDP SENT" not in output(answer), output(answer)
        record(deployed, "TCP/UDP/unix-socket connections (services, Postgres, Redis, outside)", answer)

        # 5. Killing the parent and everything else it can name — through both /run_code routes.
        for via in ("sandbox", "verifier"):
            answer = run_code(deployed, KILLER, via=via)
            assert all(alive(service) for service in deployed.services())
            record(deployed, f"kill the parent / pid 1 / -1 / every visible pid (via {via} /run_code)", answer)

        # 6. Bombs: each is stopped, answered with a status, and leaves nothing behind.
        for name, code in BOMBS.items():
            answer = run_code(deployed, code, run_timeout=5)
            run = answer["run_result"]
            assert run is not None and run["status"] in ("Finished", "TimeLimitExceeded"), answer
            if name == "500 MB of stdout":
                assert run["truncated"] is True and len(run["stdout"]) <= 1_000_000
            record(deployed, name, answer)

        # 7. A daemon that outlives its run.
        answer = run_code(deployed, DAEMON)
        assert "daemon started" in output(answer)
        assert host_processes_with(DAEMON_MARKER) == [], "a daemon survived its run"
        record(deployed, "setsid double-fork daemon surviving the run", answer)

        # 8. Raising limits, ctypes syscalls, writing the read-only view, reading PID 1's memory.
        answer = run_code(deployed, ESCALATE)
        text = output(answer)
        for forbidden in ("RAISED", "WROTE /usr", "READ PID1 MEM"):
            assert forbidden not in text, text
        for line in text.splitlines():
            if line.startswith(("unshare", "ptrace", "mount")):
                assert "-> -1" in line, line
        record(deployed, "raise rlimits; ctypes unshare/ptrace/mount/setuid; write /usr; read /proc/1/mem", answer)

        # 9. Memory no resident set shows: each ends in the memory limit or a clean refusal, and never
        #    holds more than the run's tmpfs caps (half + a quarter + a quarter of the limit).
        for name, (code, extra) in _memory_attacks().items():
            answer = run_code(deployed, code, memory_limit_MB=MEMORY_MB, run_timeout=10, **extra)
            text = output(answer)
            for forbidden in ("HELD", "MAPPED", "SURVIVED", "CREATED"):
                assert forbidden not in text, (name, text)
            if "wrote" in text:
                cap = MEMORY_MB // 2 if "/work" in name else MEMORY_MB // 4
                assert int(text.split("wrote ", 1)[1].split()[0]) <= cap, (name, text)
            limited = "memory limit exceeded" in answer["message"]
            assert limited or "refused" in text, (name, answer)
            if "together" in name:  # files count into memory_limit_MB, with the resident set
                assert limited, answer
            record(deployed, name, answer)

        # 10. The seccomp filter: every refused family, from ctypes and from C++; other ABIs are killed.
        python_code, cpp_code, expected = _seccomp_programs()
        for language, code, other_abi in (("python", python_code, "x32"), ("cpp", cpp_code, "int80")):
            answer = run_code(deployed, code, language=language)
            lines = output(answer).splitlines()
            # the C++ program leaves out raw clone (a clone that got through would run on as a copy)
            wanted = [line for line in expected if language == "python" or not line.startswith("clone ")]
            assert lines[:len(wanted)] == wanted, (language, output(answer))
            assert f"{other_abi} next" in lines and f"{other_abi.upper()} ALLOWED" not in output(answer), lines
            assert answer["run_result"]["return_code"] == -31, answer  # SIGSYS: the foreign ABI's call
            record(deployed, f"seccomp: {len(wanted)} refused calls via {language}, then a {other_abi} call", answer)

    assert health.misses == [], f"/healthz missed during the attacks: {health.misses}"
    assert health.polls > 0
    deployed.table.append(("/healthz of gateway, verifier, sandbox throughout", "every poll 200",
                           f"{health.polls} polls, slowest {health.worst_s:.2f}s"))
    assert all(alive(service) for service in deployed.services())
    left = _run_processes(deployed.sandbox.uid) - runs_before
    assert not left, f"runs left processes behind: {left}"


def _run_processes(uid: int) -> set[int]:
    """Processes of ``uid`` or nobody (what runs become when the service is root) that belong to a
    sandbox run: working in a run's dir (``/work`` inside, ``rewardhub-run-*`` in the weak mode) or
    being a run's ``bwrap``/supervisor. (The machine may run other tests' services as the same uid,
    so counting every process of the uid would measure them too.)"""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            real = int(Path(f"/proc/{entry}/status").read_text().split("Uid:")[1].split()[0])
            if real not in (uid, 65534) or real == 0:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd.startswith("/work") or "rewardhub-run-" in cwd or b"supervisor.py" in cmdline or b"bwrap" in cmdline:
            found.add(int(entry))
    return found


GAMING_ENDINGS = ["import sys\nsys.exit(0)", "raise SystemExit", "import os\nos._exit(0)",
                  "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "import os\nos.kill(-1, 9)"]


def test_rewards_cannot_be_gamed_through_the_platform(deployment: Deployment) -> None:
    """Through /v1/rewards (gateway -> verifier -> sandbox): right scores 1, wrong scores 0, whatever it does."""
    deployed = deployment
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    threaded = ("```python\nimport threading\ndef add(a, b):\n    out = []\n    ts = [threading.Thread(target=out.append, "
                "args=(v,)) for v in (a, b)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return sum(out)\n```")
    wrong = [f"```python\ndef add(a, b):\n    return 0\n{ending}\n```" for ending in GAMING_ENDINGS]
    items = [{"id": f"c{i}", "completion": c, "ground_truth": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
             for i, c in enumerate([right, threaded, *wrong])]
    response = httpx.post(deployed.gateway.url + "/v1/rewards", timeout=HTTP_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {deployed.trainer_key}"},
                          json={"spec": {"type": "code", "timeout_s": 5}, "items": items})
    assert response.status_code == 200, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    assert (results["c0"]["score"], results["c0"]["status"]) == (1.0, "ok")
    assert (results["c1"]["score"], results["c1"]["status"]) == (1.0, "ok"), results["c1"]
    for index, ending in enumerate(GAMING_ENDINGS, start=2):
        result = results[f"c{index}"]
        assert (result["score"], result["status"]) == (0.0, "ok"), (ending, result)
        deployed.table.append((f"wrong solution + {ending.splitlines()[-1]}", "scored 0", result["status"]))
    deployed.table.append(("correct solution using threads", "scored 1", results["c1"]["status"]))


@pytest.mark.parametrize("service_user", ["nonroot"], indirect=True)
def test_a_hundred_busy_runs_time_out_on_time_while_readiness_answers(deployment: Deployment) -> None:
    """veRL-style load: 100 concurrent `while True: pass` at run_timeout=10, /readyz polled meanwhile."""
    deployed = deployment
    ready: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll_ready() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.wait(0.5):
                started = time.monotonic()
                for service in (deployed.sandbox, deployed.verifier):
                    ready.append((client.get(service.url + "/readyz").status_code, time.monotonic() - started))

    poller = threading.Thread(target=poll_ready, daemon=True)
    poller.start()
    started = time.monotonic()

    def one(_: int) -> tuple[str, float]:
        answer = run_code(deployed, "while True:\n    pass", run_timeout=10)
        return answer["run_result"]["status"], time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    stop.set()
    poller.join(timeout=60)
    statuses = {status for status, _ in answers}
    slowest = max(elapsed for _, elapsed in answers)
    print(f"\n100 concurrent busy runs at run_timeout=10: statuses {statuses}, all answered within {slowest:.1f}s; "
          f"/readyz {len(ready)} polls, codes {sorted({code for code, _ in ready})}, "
          f"slowest {max(latency for _, latency in ready):.2f}s")
    # Every run was ended by its limit. How soon the last answer came is a figure (printed above and
    # measured by benchmarks/sandbox_bench.py), not a pass/fail bound on a loaded CI machine.
    assert statuses == {"TimeLimitExceeded"}
    assert ready and all(code == 200 for code, _ in ready)

"""Tool sessions under attack, with the sandbox run as deployed: a separate `rewardhub serve sandbox`
process as an unprivileged uid (and again as root when the tests are root).

A session lives across requests, so beyond a one-shot run's containment it must not see another
live session's files or processes, must not outlive its DELETE (its processes are gone when the 204
comes), its timeout or the service, and its interpreter — untrusted, as it runs the code — must not
be able to hurt the session supervisor or the service by writing to the pipes it shares with them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require
from tests.security.nonroot import NonrootRuntime, Service, start_service

pytestmark = [pytest.mark.security]

HTTP_TIMEOUT_S = 60.0
PROJECT = {"X-Rewardhub-Project": "tenant-a"}


def create(service: Service, headers: dict[str, str] = PROJECT, **fields: Any) -> str:
    response = httpx.post(service.url + "/v1/sessions", json={"ttl_s": 300, **fields}, headers=headers,
                          timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


def execute(service: Service, session_id: str, code: str, headers: dict[str, str] = PROJECT,
            **fields: Any) -> dict[str, Any]:
    response = httpx.post(f"{service.url}/v1/sessions/{session_id}/execute", headers=headers,
                          json={"code": code, "timeout_s": 10, **fields}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def state(service: Service, session_id: str) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/v1/sessions/{session_id}", headers=PROJECT, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def host_processes_with(marker: str) -> list[int]:
    """Processes anywhere on the host whose command line holds ``marker`` (the host sees every PID
    namespace's processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


# The long-lived process is a shell named ``marker`` (argv[0]) that says "ready" once it runs (a
# process's /proc cmdline is only settled once its exec has finished, which returning from fork/exec
# does not guarantee), then blocks in the ``read`` builtin on a pipe the session keeps open: it never
# forks, so exactly one process carries the marker.
SHELL = "'echo ready; read x; :'"


def daemon(marker: str) -> str:
    """Code that leaves a setsid double-forked shell behind, ``marker`` its argv[0]."""
    return ("import os\nready_r, ready_w = os.pipe()\nhold_r, hold_w = os.pipe()\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.dup2(ready_w, 1)\n        os.dup2(hold_r, 0)\n"
            f"        os.execv('/bin/sh', [{marker!r}, '-c', {SHELL}])\n    os._exit(0)\n"
            "os.close(ready_w)\nos.close(hold_r)\nos.wait()\nassert os.read(ready_r, 6) == b'ready\\n'\n"
            "print('daemon started')")


def child(marker: str) -> str:
    """Code that keeps a shell child (``marker`` its argv[0]) in the session's namespace."""
    return (f"import subprocess\nkept = subprocess.Popen([{marker!r}, '-c', {SHELL}], executable='/bin/sh', "
            "stdin=subprocess.PIPE, stdout=subprocess.PIPE)\nassert kept.stdout.readline() == b'ready\\n'")


def alive(service: Service) -> bool:
    return service.proc.poll() is None and httpx.get(service.url + "/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module", params=["nonroot", "root"])
def sandbox(request: pytest.FixtureRequest, nonroot_runtime: NonrootRuntime) -> Iterator[Service]:
    """One sandbox service per module and user (each test's sessions and markers are its own): as the
    unprivileged account, and as root when the tests are root."""
    as_root = request.param == "root"
    if as_root:
        require(os.geteuid() == 0, "running the services as root needs the tests to run as root")
    service = start_service(nonroot_runtime, "sandbox", {"REWARDHUB_LOG_JSON": "false"}, as_root=as_root,
                            ready_path="/readyz")
    yield service
    service.stop()


def test_a_session_sees_neither_another_sessions_files_nor_its_processes(sandbox: Service) -> None:
    marker = f"rh-session-{uuid.uuid4().hex[:12]}"
    planted, spy = create(sandbox), create(sandbox)
    canary = "SESSION-A-CANARY-" + marker
    execute(sandbox, planted, f"for d in ('/work', '/tmp', '/dev/shm'):\n    open(d + '/secret', 'w').write({canary!r})")
    assert execute(sandbox, planted, daemon(marker))["stdout"] == "daemon started\n"
    assert host_processes_with(marker), "the planted process should be running (else this test proves nothing)"
    looked = execute(sandbox, spy, (
        "import json, os\nfound = []\nfor d in ('/work', '/tmp', '/dev/shm'):\n    for n in os.listdir(d):\n"
        "        found.append(open(os.path.join(d, n), errors='replace').read())\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "cmdlines = [open(f'/proc/{p}/cmdline', 'rb').read().decode(errors='replace') for p in pids]\n"
        "print(json.dumps({'found': found, 'pids': pids, 'cmdlines': cmdlines}))"))
    assert looked["status"] == "success", looked
    assert canary not in looked["stdout"] and marker not in looked["stdout"], looked["stdout"]
    pids = json.loads(looked["stdout"])["pids"]
    assert max(pids) < 10, f"the session sees processes beyond its own: {pids}"
    # ... while the planting session still has its files: the namespace and its /work persist
    assert execute(sandbox, planted, "print(open('/work/secret').read())")["stdout"] == canary + "\n"


def test_a_session_cannot_reach_the_network(sandbox: Service) -> None:
    sid = create(sandbox)
    code = (
        "import socket\nout = []\n"
        f"for host, port in [('127.0.0.1', {sandbox.port}), ('127.0.0.1', 5432), ('127.0.0.1', 6379), "
        "('10.0.0.1', 80), ('8.8.8.8', 53)]:\n"
        "    try:\n        socket.create_connection((host, port), timeout=2).close()\n"
        "        out.append(f'CONNECTED {host}:{port}')\n"
        "    except OSError as exc:\n        out.append(f'refused {host}:{port}')\n"
        "try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))\n"
        "    out.append('UDP SENT')\nexcept OSError:\n    out.append('udp refused')\n"
        "print(out, socket.if_nameindex())")
    body = execute(sandbox, sid, code, timeout_s=30)
    assert body["status"] == "success", body
    assert "CONNECTED" not in body["stdout"] and "UDP SENT" not in body["stdout"], body["stdout"]
    assert "'eth" not in body["stdout"] and "(1, 'lo')" in body["stdout"]  # only its own loopback


def test_a_session_cannot_write_outside_its_tmpfs_mounts(sandbox: Service) -> None:
    sid = create(sandbox)
    targets = ["/usr/planted", "/opt/rewardhub/repl.py", "/opt/rewardhub/session.py", "/opt/rewardhub/planted",
               "/etc/planted", "/planted", "/dev/planted", "/proc/planted", str(sandbox.home / "planted")]
    code = (f"out = []\nfor path in {targets!r}:\n    try:\n        open(path, 'a').write('x')\n"
            "        out.append('WROTE ' + path)\n    except OSError as exc:\n        out.append('refused ' + path)\n"
            "for d in ('/work', '/tmp', '/dev/shm'):\n    open(d + '/mine', 'w').write('ok')\n    out.append('own ' + d)\n"
            "print(out)")
    body = execute(sandbox, sid, code)
    assert body["status"] == "success", body
    assert "WROTE" not in body["stdout"], body["stdout"]
    assert all(f"own {d}" in body["stdout"] for d in ("/work", "/tmp", "/dev/shm"))
    # the interpreter's own code is read-only: the next execute still runs the real loop
    assert execute(sandbox, sid, "print('still the real repl')")["stdout"] == "still the real repl\n"


def test_a_sessions_processes_are_gone_when_delete_answers(sandbox: Service) -> None:
    marker = f"rh-session-{uuid.uuid4().hex[:12]}"
    sid = create(sandbox)
    assert execute(sandbox, sid, daemon(marker))["stdout"] == "daemon started\n"
    execute(sandbox, sid, child(marker))
    assert len(host_processes_with(marker)) == 2
    response = httpx.delete(f"{sandbox.url}/v1/sessions/{sid}", headers=PROJECT, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 204
    assert host_processes_with(marker) == [], "a session's process outlived its DELETE"
    assert state(sandbox, sid)["ended_reason"] == "closed"


def test_a_timeout_ends_every_process_of_the_session(sandbox: Service) -> None:
    marker = f"rh-session-{uuid.uuid4().hex[:12]}"
    sid = create(sandbox)
    execute(sandbox, sid, daemon(marker))
    body = execute(sandbox, sid, "while True:\n    pass", timeout_s=0.5)
    assert body["status"] == "timeout"
    assert host_processes_with(marker) == [], "a session's process outlived its timeout"
    assert state(sandbox, sid)["ended_reason"] == "timeout"


def test_the_interpreter_cannot_hurt_its_supervisor_or_the_service(sandbox: Service) -> None:
    sid = create(sandbox)
    # PID 1 (the supervisor) is out of reach: signals, ptrace, its memory and descriptors
    attack = ("import ctypes, os, signal\nlibc = ctypes.CDLL(None, use_errno=True)\nout = []\n"
              "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
              "    try:\n        os.kill(1, sig)\n    except OSError as exc:\n        out.append(exc.errno)\n"
              "out.append(libc.ptrace(16, 1, 0, 0))\n"
              "for path in ('/proc/1/mem', '/proc/1/fd/0', '/proc/1/fd/1'):\n"
              "    try:\n        open(path, 'rb').read(1)\n        out.append('OPENED ' + path)\n"
              "    except OSError:\n        out.append('refused')\nprint(out)")
    body = execute(sandbox, sid, attack)
    assert body["status"] == "success" and "OPENED" not in body["stdout"], body
    assert execute(sandbox, sid, "print('supervisor alive')")["stdout"] == "supervisor alive\n"
    # A forged answer on the interpreter's own answer pipe (a huge frame header) ends only its session.
    forge = ("import os, struct\nfor fd in map(int, os.listdir('/proc/self/fd')):\n"
             "    try:\n        os.write(fd, struct.pack('>I', 2**31))\n    except OSError:\n        pass\n"
             "import time\ntime.sleep(2)")
    forged = execute(sandbox, sid, forge, timeout_s=5)
    assert forged["status"] == "runtime_error" and "answer frame too large" in forged["stderr"], forged
    assert state(sandbox, sid)["ended_reason"] == "protocol_error"
    # Killing everything it can see reaches its own namespace only (kill(-1) spares PID 1 and itself).
    other = create(sandbox)
    killer = create(sandbox)
    marker = f"rh-session-{uuid.uuid4().hex[:12]}"
    execute(sandbox, killer, child(marker))
    assert execute(sandbox, killer, "import os\nos.kill(-1, 9)\nkept.wait()\nprint(kept.returncode)")["stdout"] == "-9\n"
    assert execute(sandbox, killer, "print('killer alive')")["stdout"] == "killer alive\n"
    assert execute(sandbox, other, "print('untouched')")["stdout"] == "untouched\n"
    assert alive(sandbox)


def test_another_tenants_session_id_is_404_like_an_unknown_one(sandbox: Service) -> None:
    sid = create(sandbox)
    intruder = {"X-Rewardhub-Project": "tenant-b"}
    for method, suffix in (("POST", "/execute"), ("GET", ""), ("DELETE", "")):
        theirs = httpx.request(method, f"{sandbox.url}/v1/sessions/{sid}{suffix}", headers=intruder,
                               json={"code": "print(1)"} if method == "POST" else None, timeout=HTTP_TIMEOUT_S)
        unknown = httpx.request(method, f"{sandbox.url}/v1/sessions/ses_unknown{suffix}", headers=intruder,
                                json={"code": "print(1)"} if method == "POST" else None, timeout=HTTP_TIMEOUT_S)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["message"].replace(sid, "ID") == \
            unknown.json()["error"]["message"].replace("ses_unknown", "ID")
    assert execute(sandbox, sid, "print('still mine')")["stdout"] == "still mine\n"


def test_stopping_the_service_ends_every_session(start_nonroot_service: Callable[..., Service]) -> None:
    sandbox = start_nonroot_service("sandbox", {"REWARDHUB_LOG_JSON": "false"}, ready_path="/readyz")
    marker = f"rh-session-{uuid.uuid4().hex[:12]}"
    for _ in range(3):
        execute(sandbox, create(sandbox), daemon(marker))
    assert len(host_processes_with(marker)) == 3
    sandbox.stop()  # SIGTERM: the lifespan's shutdown kills every session before the process exits
    assert host_processes_with(marker) == [], "a session outlived the service"

"""Stateful tool sessions (/v1/sessions): real sandboxed interpreters, one per session."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from services.common.sandbox_api import MAX_CODE_CHARS
from services.sandbox import sessions
from tests.unit.sandbox.conftest import require_namespaces

PROJECT = "X-Rewardhub-Project"


@pytest.fixture
def make_client(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)``: the sandbox app (lifespan running) with ``REWARDHUB_SANDBOX_*`` set."""
    require_namespaces()
    from services.common.settings import reset_settings_cache
    from services.sandbox.app import create_app

    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        for name, value in settings.items():
            monkeypatch.setenv(f"REWARDHUB_SANDBOX_{name.upper()}", str(value))
        reset_settings_cache()
        client = TestClient(create_app())
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def registry(client: TestClient) -> sessions.SessionRegistry:
    found: sessions.SessionRegistry = client.app.state.sessions  # type: ignore[attr-defined]
    return found


def create(client: TestClient, project: str | None = "p1", **fields: Any) -> str:
    response = client.post("/v1/sessions", json={"ttl_s": 600, **fields}, headers=_project(project))
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session_id"]
    return session_id


def execute(client: TestClient, session_id: str, code: str, project: str | None = "p1",
            **fields: Any) -> dict[str, Any]:
    response = client.post(f"/v1/sessions/{session_id}/execute", json={"code": code, "timeout_s": 10, **fields},
                           headers=_project(project))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _project(project: str | None) -> dict[str, str]:
    return {PROJECT: project} if project is not None else {}


def test_namespace_imports_functions_and_files_persist_across_executes(client: TestClient) -> None:
    sid = create(client)
    first = execute(client, sid, "open('state.txt', 'w').write('kept')\nimport math\nx = 41\ndef double(v):\n"
                                 "    return 2 * v")
    assert first == {"status": "success", "stdout": "", "stderr": "", "truncated": False, "execution_count": 1,
                     "duration_s": first["duration_s"]}
    second = execute(client, sid, "x += 1\nprint(x, double(x), math.floor(2.5), open('state.txt').read())")
    assert (second["status"], second["stdout"], second["execution_count"]) == ("success", "42 84 2 kept\n", 2)
    # As a Python REPL: a final expression's repr is printed, None is not, earlier expressions are not.
    assert execute(client, sid, "x * 2\n'shown'")["stdout"] == "'shown'\n"
    assert execute(client, sid, "open('state.txt', 'a').write('!')")["stdout"] == "1\n"  # write's return value
    assert execute(client, sid, "None")["stdout"] == ""
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"], info["execution_count"]) == ("live", None, 5)


def test_the_codes_modules_never_resolve_to_the_sandboxs_own(client: TestClient) -> None:
    # The interpreter imports its frame codec from the sandbox's folder; the code's own `frames`,
    # `session` and `supervisor` modules in its working directory are the ones it gets.
    sid = create(client)
    execute(client, sid, "for name in ('frames', 'session', 'supervisor'):\n"
                         "    open(name + '.py', 'w').write(f'WHO = {name!r}')")
    found = execute(client, sid, "import frames, session, supervisor\n"
                                 "print(frames.WHO, session.WHO, supervisor.WHO)")
    assert (found["status"], found["stdout"]) == ("success", "frames session supervisor\n")


def test_runtime_error_has_the_traceback_and_the_session_goes_on(client: TestClient) -> None:
    sid = create(client)
    execute(client, sid, "y = 5")
    failed = execute(client, sid, "print('before')\ndef f():\n    return 1 / 0\nf()")
    assert failed["status"] == "runtime_error" and failed["stdout"] == "before\n"
    stderr = failed["stderr"]
    assert stderr.startswith("Traceback (most recent call last):\n") and stderr.endswith(
        "ZeroDivisionError: division by zero\n")
    assert 'File "<cell 2>", line 4, in <module>' in stderr and "repl.py" not in stderr  # only the code's frames
    syntax = execute(client, sid, "def (:")
    assert syntax["status"] == "runtime_error" and "SyntaxError" in syntax["stderr"]
    # SystemExit is an uncaught exception like any other: the interpreter, and its namespace, live on.
    exited = execute(client, sid, "import sys\nsys.exit(3)")
    assert exited["status"] == "runtime_error" and "SystemExit: 3" in exited["stderr"]
    assert execute(client, sid, "print(y)") ["stdout"] == "5\n"


def test_output_is_truncated_per_stream_at_max_output_bytes(client: TestClient) -> None:
    sid = create(client)
    body = execute(client, sid, "import sys\nprint('a' * 1000)\nsys.stderr.write('b' * 10)", max_output_bytes=100)
    assert body["status"] == "success" and body["truncated"] is True
    assert body["stdout"] == "a" * 100 and body["stderr"] == "b" * 10
    # 5 MB written through the pipe (read and dropped past the cap), in one execute
    big = execute(client, sid, "import os\nfor _ in range(80):\n    os.write(1, b'c' * 65536)", max_output_bytes=1000)
    assert (big["status"], big["stdout"], big["truncated"]) == ("success", "c" * 1000, True)
    assert execute(client, sid, "print('short')")["truncated"] is False


def test_timeout_kills_the_session_and_later_calls_are_409(client: TestClient) -> None:
    sid = create(client)
    execute(client, sid, "z = 1")
    process = registry(client).records[sid].process
    assert process is not None
    body = execute(client, sid, "import time\nprint('started', flush=True)\ntime.sleep(60)", timeout_s=0.5)
    assert (body["status"], body["stdout"], body["execution_count"]) == ("timeout", "started\n", 2)
    assert "ran past its 0.5 s limit" in body["stderr"] and 0.5 <= body["duration_s"] < 60
    assert process.returncode is not None  # the sandbox is gone before the answer
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "timeout")
    again = client.post(f"/v1/sessions/{sid}/execute", json={"code": "print(z)"}, headers=_project("p1"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "session_ended"
    assert "timeout" in again.json()["error"]["message"]
    assert client.delete(f"/v1/sessions/{sid}", headers=_project("p1")).status_code == 204


def test_the_interpreter_exiting_ends_the_session(client: TestClient) -> None:
    sid = create(client)
    body = execute(client, sid, "import os\nprint('bye', flush=True)\nos._exit(3)")
    assert (body["status"], body["stdout"]) == ("runtime_error", "bye\n")
    assert "exited with code 3" in body["stderr"]
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "exited")


def test_memory_is_bounded_like_a_one_shot_run(client: TestClient) -> None:
    sid = create(client, memory_mb=64)
    # RLIMIT_AS: a too-large allocation is a MemoryError in the code, and the session goes on
    body = execute(client, sid, "blob = bytearray(256 * 1024 * 1024)")
    assert body["status"] == "runtime_error" and "MemoryError" in body["stderr"]
    assert execute(client, sid, "print('alive')")["stdout"] == "alive\n"
    # tmpfs files count into the limit with the resident sets (as in a one-shot run): over it, ended
    fill = ("for d in ('/work', '/tmp', '/dev/shm'):\n    try:\n        for n in range(64):\n"
            "            open(f'{d}/fill{n}', 'wb').write(b'x' * (1 << 20))\n    except OSError:\n        pass\n"
            "import time\ntime.sleep(5)")
    body = execute(client, sid, fill, timeout_s=30)
    assert body["status"] == "runtime_error" and "went over its memory limit (64 MB)" in body["stderr"], body
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "memory_exceeded")


def test_idle_sessions_are_reaped_by_the_sweeper_with_an_injected_clock(client: TestClient) -> None:
    now = [1_000_000.0]
    reg = registry(client)
    reg.clock = lambda: now[0]
    idle, used = create(client, ttl_s=60), create(client, ttl_s=60)
    created = client.get(f"/v1/sessions/{idle}", headers=_project("p1")).json()
    assert created["expires_at"] == "1970-01-12T13:47:40Z"  # 1,000,000 s + 60 s after the epoch
    idle_process = reg.records[idle].process
    now[0] += 50
    execute(client, used, "print('still here')")  # used at +50: expires at +110
    now[0] += 20  # +70: the idle one is past its ttl (+60), the used one is not
    assert client.portal.call(reg.sweep) == [idle]  # type: ignore[union-attr]
    assert idle_process is not None and idle_process.returncode is not None
    info = client.get(f"/v1/sessions/{idle}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "expired")
    assert client.get(f"/v1/sessions/{used}", headers=_project("p1")).json()["state"] == "live"
    now[0] += 41  # +111
    assert client.portal.call(reg.sweep) == [used]  # type: ignore[union-attr]
    # Ended records are forgotten after the retention (3600 s by default): then the id is unknown.
    now[0] += 3600
    client.portal.call(reg.sweep)  # type: ignore[union-attr]
    assert client.get(f"/v1/sessions/{idle}", headers=_project("p1")).status_code == 404


def test_the_sweeper_ends_a_session_whose_sandbox_died_between_requests(client: TestClient) -> None:
    sid = create(client)
    process = registry(client).records[sid].process
    assert process is not None
    process.proc.kill()
    process.proc.wait()
    assert client.portal.call(registry(client).sweep) == [sid]  # type: ignore[union-attr]
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "error")


def test_global_and_per_project_caps_are_429_sessions_exhausted(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_sessions=3, max_sessions_per_project=2)
    first = create(client, "a")
    create(client, "a")
    over = client.post("/v1/sessions", json={}, headers=_project("a"))
    assert over.status_code == 429 and over.json()["error"]["code"] == "sessions_exhausted"
    assert "MAX_SESSIONS_PER_PROJECT" in over.json()["error"]["message"] and over.headers["Retry-After"] == "5"
    create(client, "b")  # another project still has room under the global cap
    full = client.post("/v1/sessions", json={}, headers=_project("c"))
    assert full.status_code == 429 and "REWARDHUB_SANDBOX_MAX_SESSIONS)" in full.json()["error"]["message"]
    assert client.delete(f"/v1/sessions/{first}", headers=_project("a")).status_code == 204
    create(client, "c")  # a closed session frees its place


def test_another_projects_session_is_404_exactly_like_an_unknown_one(client: TestClient) -> None:
    sid = create(client, "owner")
    unknown = "ses_" + "x" * 24
    for method, path, body in (("POST", "/execute", {"code": "print(1)"}), ("GET", "", None), ("DELETE", "", None)):
        answers = []
        for session_id, project in ((sid, "intruder"), (sid, None), (unknown, "owner")):
            response = client.request(method, f"/v1/sessions/{session_id}{path}", json=body,
                                      headers=_project(project))
            assert response.status_code == 404, (method, path, project, response.text)
            answers.append(response.json()["error"] | {"message": response.json()["error"]["message"].replace(
                session_id, "<id>")})
        assert answers[0] == answers[1] == answers[2], answers
        assert answers[0]["code"] == "session_not_found"
    assert execute(client, sid, "print('mine')", project="owner")["stdout"] == "mine\n"  # untouched


def test_delete_is_idempotent_for_the_owner_and_kills_the_sandbox(client: TestClient) -> None:
    sid = create(client)
    process = registry(client).records[sid].process
    assert process is not None
    assert client.delete(f"/v1/sessions/{sid}", headers=_project("p1")).status_code == 204
    assert process.returncode is not None
    assert client.delete(f"/v1/sessions/{sid}", headers=_project("p1")).status_code == 204
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "closed")
    ended = client.post(f"/v1/sessions/{sid}/execute", json={"code": "1"}, headers=_project("p1"))
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "session_ended"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("", {"ttl_s": 0}, "ttl_s"),
    ("", {"ttl_s": 3601}, "ttl_s"),  # above REWARDHUB_SANDBOX_SESSION_MAX_TTL_S (3600 by default)
    ("", {"language": "ruby"}, "language"),
    ("", {"memory_mb": 8}, "memory_mb"),
    ("", {"ttl": 5}, "ttl"),  # a misspelt field is refused, not ignored
    ("/execute", {"code": "x" * (MAX_CODE_CHARS + 1)}, "code"),
    ("/execute", {"code": "1", "timeout_s": 0}, "timeout_s"),
    ("/execute", {"code": "1", "max_output_bytes": 2_000_000}, "max_output_bytes"),  # above the setting
])
def test_bad_input_is_422_naming_the_field(client: TestClient, path: str, body: dict[str, Any], field: str) -> None:
    url = "/v1/sessions" + (f"/{create(client)}{path}" if path else "")
    response = client.post(url, json=body, headers=_project("p1"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_metrics_count_live_sessions_and_executions_by_status(client: TestClient) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    live, ok, failed = (sample("rewardhub_sandbox_sessions_live"),
                        sample("rewardhub_sandbox_session_executions_total", status="success"),
                        sample("rewardhub_sandbox_session_executions_total", status="runtime_error"))
    sid = create(client)
    assert sample("rewardhub_sandbox_sessions_live") == live + 1
    execute(client, sid, "1")
    execute(client, sid, "raise ValueError")
    assert sample("rewardhub_sandbox_session_executions_total", status="success") == ok + 1
    assert sample("rewardhub_sandbox_session_executions_total", status="runtime_error") == failed + 1
    client.delete(f"/v1/sessions/{sid}", headers=_project("p1"))
    assert sample("rewardhub_sandbox_sessions_live") == live
    assert "rewardhub_sandbox_sessions_live" in client.get("/metrics").text


def test_service_shutdown_kills_every_session(isolated_env: Path) -> None:
    require_namespaces()
    from services.sandbox.app import create_app

    with TestClient(create_app()) as client:
        ids = [create(client), create(client, "p2")]
        processes = [registry(client).records[sid].process for sid in ids]
        assert all(p is not None and p.returncode is None for p in processes)
    # the lifespan's shutdown has run
    assert all(p is not None and p.returncode is not None for p in processes)
    assert {registry(client).records[sid].ended_reason for sid in ids} == {"shutdown"}


def test_the_exit_codes_the_supervisor_ends_with_are_the_ones_the_service_reads() -> None:
    source = (Path(sessions.__file__).parent / "inside" / "session.py").read_text()
    assigned = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "EXIT_CODES" for t in node.targets))
    codes = ast.literal_eval(assigned.value)
    assert {code: reason for reason, code in codes.items()} == sessions.EXIT_REASONS


ISOLATION_PROBE = """import json, os, resource, socket
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
mounts = sorted(' '.join(line.split()[1:4]) for line in open('/proc/self/mounts'))
limits = {name: resource.getrlimit(getattr(resource, name)) for name in
          ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}
print(json.dumps({'uid': os.getuid(), 'hostname': socket.gethostname(), 'cwd': os.getcwd(), 'root': sorted(os.listdir('/')),
                  'mounts': mounts, 'limits': limits, 'nice': os.getpriority(os.PRIO_PROCESS, 0),
                  'interfaces': socket.if_nameindex(), 'pids': len([p for p in os.listdir('/proc') if p.isdigit()]),
                  **{key: status[key].strip() for key in ('Seccomp', 'Seccomp_filters', 'NoNewPrivs', 'CapEff', 'CapBnd')}}))
"""


def test_the_interpreter_is_isolated_exactly_like_a_one_shot_run(client: TestClient) -> None:
    import json

    one_shot = client.post("/run_code", json={"code": ISOLATION_PROBE, "language": "python", "memory_limit_MB": 256})
    assert one_shot.json()["status"] == "Success", one_shot.text
    expected = json.loads(one_shot.json()["run_result"]["stdout"])
    sid = create(client, memory_mb=256)
    seen = json.loads(execute(client, sid, ISOLATION_PROBE)["stdout"])
    assert seen == expected  # uid, namespaces, mounts, rlimits, seccomp filters, capabilities, niceness
    assert seen["Seccomp_filters"] == "2" and seen["CapEff"] == "0000000000000000" and seen["NoNewPrivs"] == "1"
    assert seen["limits"]["RLIMIT_AS"] == [256 << 20, 256 << 20] and seen["interfaces"] == [[1, "lo"]]
    # CPU seconds are the one limit that differs: a whole-life budget instead of one run's wall limit + 1
    cpu = execute(client, sid, "import resource\nresource.getrlimit(resource.RLIMIT_CPU)")["stdout"]
    assert cpu == "(600, 601)\n"  # REWARDHUB_SANDBOX_SESSION_CPU_S's default


def test_the_cpu_budget_ending_the_interpreter_is_a_timeout_with_reason_cpu_limit(client: TestClient) -> None:
    sid = create(client)
    # SIGXCPU is what RLIMIT_CPU's soft limit sends (raised here, as the one-shot runs' test does)
    body = execute(client, sid, "import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)")
    assert body["status"] == "timeout" and "used up its CPU time (600 s)" in body["stderr"], body
    info = client.get(f"/v1/sessions/{sid}", headers=_project("p1")).json()
    assert (info["state"], info["ended_reason"]) == ("ended", "cpu_limit")


def test_concurrent_executes_queue_and_delete_ends_one_in_flight(client: TestClient) -> None:
    import asyncio

    import httpx

    sid = create(client)
    url = f"/v1/sessions/{sid}"

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox", headers=_project("p1")) as http:
            # two executes at once on one session run one after the other, each seeing the other's effect
            both = await asyncio.gather(*(http.post(url + "/execute", json={"code": "n = globals().get('n', 0) + 1\nn"})
                                          for _ in range(2)))
            # DELETE while an execute is running ends it at once: the execute answers 409
            running = asyncio.ensure_future(http.post(url + "/execute", json={"code": "import time\ntime.sleep(60)",
                                                                             "timeout_s": 60}))
            while not registry(client).records[sid].lock.locked() or not registry(client).records[sid].process.in_request:  # type: ignore[union-attr]
                await asyncio.sleep(0)  # until the execute is in flight (no timing involved)
            deleted = await http.delete(url)
            return list(both), deleted, await running

    both, deleted, running = client.portal.call(scenario)  # type: ignore[union-attr]
    assert sorted(r.json()["stdout"] for r in both) == ["1\n", "2\n"]
    assert sorted(r.json()["execution_count"] for r in both) == [1, 2]
    assert deleted.status_code == 204
    assert running.status_code == 409 and running.json()["error"]["code"] == "session_ended", running.text
    assert "(closed)" in running.json()["error"]["message"]


def test_a_background_writer_faster_than_the_reader_does_not_keep_answers_back(client: TestClient) -> None:
    sid = create(client)
    spam = ("import os, threading\ndef spam():\n    while True:\n        os.write(1, b'y' * 65536)\n"
            "threading.Thread(target=spam, daemon=True).start()")
    assert execute(client, sid, spam, max_output_bytes=10)["status"] == "success"
    body = execute(client, sid, "import sys\nsys.stderr.write('answered')", max_output_bytes=10)
    assert (body["status"], body["stderr"], body["truncated"]) == ("success", "answered", True)
    assert body["stdout"] == "y" * 10  # what the thread wrote meanwhile, capped


def test_a_host_that_cannot_isolate_is_503_and_leaks_no_place(client: TestClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from services.sandbox import runner

    def unavailable(*_: Any, **__: Any) -> runner.Command:
        raise runner.SandboxUnavailable("bubblewrap cannot create the run's namespaces here: TEST DOUBLE")

    monkeypatch.setattr(runner, "sandbox_command", unavailable)
    response = client.post("/v1/sessions", json={}, headers=_project("p1"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "sandbox_unavailable"
    assert "TEST DOUBLE" in response.json()["error"]["message"]
    assert registry(client).records == {} and registry(client).live_count() == 0

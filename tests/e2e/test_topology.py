"""The docker-compose topology without Docker: every Python service as its own process.

Each service of `rewardhub.service_map.SERVICES`, and the Celery worker, is started with the
command docker-compose.yml gives it (`rewardhub` from this virtualenv, loopback host, a free
port), against the real PostgreSQL and Redis, with `REWARDHUB_<NAME>_URL` pointing at the other
processes. The compose `migrate` command runs first, the compose healthchecks are run against
the live processes, one `/v1/rewards` request crosses from the gateway to the verifier, and one
rubric job goes from the rubric_rm process through Redis to the worker, which judges with
ScriptedLLMServer (an OpenAI-compatible TEST DOUBLE on a loopback port) and writes to Postgres.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rewardhub.service_map import SERVICES
from services.common.llm.scripted import ScriptedLLMServer
from services.common.tasks import make_celery
from tests.conftest import REPO_ROOT
from tests.integration.test_rubric_rm_api import RUBRIC_TEXT, judge_script

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
CLI = Path(sys.executable).with_name("rewardhub")
SECRET_KEY = "topology-test-secret-key"
SERVICE_URL = re.compile(r"REWARDHUB_([A-Z_]+)_URL")
READY_TIMEOUT_S = 180.0  # cold imports on a loaded two-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}` against ``variables``."""
    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        if variables.get(name):
            return variables[name]
        if operator == ":?":
            raise AssertionError(f"compose requires {name}: {argument}")
        return argument if operator == ":-" else ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, value)


def translate(command: list[str], port: int | None) -> list[str]:
    """A compose command as a local argv: this virtualenv's `rewardhub`, loopback, ``port``."""
    argv = [str(CLI), *command]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    return argv


def compose_service_for(services: dict[str, dict[str, Any]], first_word: str, second: str | None = None) -> str:
    matches = [name for name, svc in services.items()
               if svc.get("command", [None])[0] == first_word
               and (second is None or svc["command"][1:2] == [second])]
    assert len(matches) == 1, f"docker-compose.yml has {matches} for `{first_word} {second or ''}`"
    return matches[0]


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} log ---\n" + self.log.read_text(errors="replace")[-chars:]


@dataclass
class Topology:
    compose: dict[str, dict[str, Any]]
    env: dict[str, str]
    workdir: Path
    running: dict[str, Running] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int | None) -> Running:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            # Own session = own process group, so the worker's pool children die with it.
            process = subprocess.Popen(argv, env=env, cwd=self.workdir, stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.running[name] = Running(name, process, log, env, port)
        return self.running[name]

    def logs(self) -> str:
        return "\n".join(r.tail() for r in self.running.values())

    def stop_all(self) -> None:
        for running in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGTERM)
        for running in self.running.values():
            try:
                running.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(timeout=10)
            # Children that outlived their parent still belong to its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGKILL)


def process_env(compose_env: dict[str, Any], *, database_url: str, redis_url: str, data_dir: Path,
                urls: dict[str, str], llm_url: str) -> dict[str, str]:
    """The compose environment of a service, with the infrastructure moved to this machine."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL")
           and (not k.startswith("REWARDHUB_") or k.startswith("REWARDHUB_TEST_"))}
    variables = {"REWARDHUB_SECRET_KEY": SECRET_KEY}
    env.update({key: interpolate(str(value), variables) for key, value in compose_env.items()})
    env.update(REWARDHUB_DATA_DIR=str(data_dir), REWARDHUB_LOG_JSON="false")
    if "DATABASE_URL" in compose_env:  # the sandbox gets none of the infrastructure (no credentials)
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, REWARDHUB_LLM_BASE_URL=llm_url,
                   REWARDHUB_LLM_MODEL="judge", REWARDHUB_LLM_MAX_RETRIES="0")
    for key in list(env):
        match = SERVICE_URL.fullmatch(key)
        if match and key != "REWARDHUB_LLM_BASE_URL":
            # A service not started here (the gpu profile's trainer) has no address on this machine.
            env[key] = urls.get(match.group(1).lower(), "")
    return env


def wait_ready(running: Running, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"{running.name} exited with {running.process.returncode}\n{running.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(running.url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"{running.name} not ready after {timeout_s}s\n{running.tail()}")


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run([str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"rewardhub {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def run_healthcheck(compose_service: dict[str, Any], running: Running) -> None:
    """The service's compose healthcheck, with python and the port translated to this machine."""
    test = compose_service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] in ("python", "python3"), test
    argv = [sys.executable, *test[2:]]
    if running.port is not None:
        argv = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{running.port}") for arg in argv]
    result = subprocess.run(argv, env=running.env, cwd=running.log.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{running.name} healthcheck failed:\n{result.stderr}\n{running.tail()}"


def request_count(url: str, service: str, route: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "rewardhub_http_requests_total" and sample.labels.get("service") == service
               and sample.labels.get("route") == route)


@pytest.fixture
def judge_double() -> Iterator[str]:
    with ScriptedLLMServer(judge_script) as server:
        yield server.start()


@pytest.fixture
def topology(postgres_url: str, redis_url: str, tmp_path: Path, judge_double: str) -> Iterator[Topology]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    ports = {name: free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    data_dir = tmp_path / "data"

    def env_of(compose_name: str) -> dict[str, str]:
        return process_env(compose[compose_name].get("environment", {}), database_url=postgres_url,
                           redis_url=redis_url, data_dir=data_dir, urls=urls, llm_url=judge_double)

    topo = Topology(compose=compose, env=env_of(compose_service_for(compose, "migrate")), workdir=tmp_path)
    try:
        run_cli(compose[compose_service_for(compose, "migrate")]["command"], topo.env, tmp_path)
        for name in SERVICES:
            compose_name = compose_service_for(compose, "serve", name)
            topo.start(name, translate(compose[compose_name]["command"], ports[name]), env_of(compose_name),
                       ports[name])
        worker = compose_service_for(compose, "worker")
        topo.start("worker", translate(compose[worker]["command"], None), env_of(worker), None)
        for name in SERVICES:
            wait_ready(topo.running[name])
        yield topo
    finally:
        topo.stop_all()


def test_compose_topology_serves_a_reward_request_across_processes(topology: Topology, redis_url: str) -> None:
    assert "verifier" in SERVICES, "the verifier is not in rewardhub.service_map.SERVICES yet"
    compose, gateway, verifier = topology.compose, topology.running["gateway"], topology.running["verifier"]

    # Every Python service is its own live process, and its compose healthcheck passes.
    assert {r.process.pid for r in topology.running.values()}.isdisjoint({os.getpid()})
    assert len({r.process.pid for r in topology.running.values()}) == len(SERVICES) + 1
    for name in SERVICES:
        run_healthcheck(compose[compose_service_for(compose, "serve", name)], topology.running[name])

    # The worker consumes from Redis.
    pong = make_celery(redis_url).send_task("rewardhub.ping", args=["x"]).get(timeout=60)
    assert pong["payload"] == "x"
    run_healthcheck(compose[compose_service_for(compose, "worker")], topology.running["worker"])

    # A key and a project, made with the CLI against the same database.
    project_id = run_cli(["projects", "create", "topology"], topology.env, topology.workdir).strip().splitlines()[-1]
    key = run_cli(["keys", "create", "--role", "admin", "--all-projects"], topology.env,
                  topology.workdir).strip().splitlines()[-1]

    graded_before = request_count(verifier.url, "verifier", "/v1/grade")
    body = {"project_id": project_id, "spec": {"type": "math"},
            "items": [{"id": "a", "completion": "so \\boxed{1/2}", "ground_truth": "0.5"},
                      {"id": "b", "completion": "\\boxed{3}", "ground_truth": "4"}]}
    response = httpx.post(gateway.url + "/v1/rewards", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=120)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{topology.logs()}"
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b"]
    assert [r["score"] for r in results] == [1.0, 0.0]
    assert [r["status"] for r in results] == ["ok", "ok"]
    # The grading happened in the verifier process, reached over HTTP.
    assert request_count(verifier.url, "verifier", "/v1/grade") == graded_before + 1

    # Code runs in the sandbox process (gateway -> verifier -> sandbox), which holds no credentials.
    sandbox = topology.running["sandbox"]
    assert "DATABASE_URL" not in sandbox.env and "REWARDHUB_SECRET_KEY" not in sandbox.env
    code = {"project_id": project_id, "spec": {"type": "code"},
            "items": [{"id": "c", "completion": "```python\ndef f(x):\n    return x + 1\n```",
                       "ground_truth": ["assert f(1) == 2", "assert f(2) == 4"]}]}
    response = httpx.post(gateway.url + "/v1/rewards", json=code, headers={"Authorization": f"Bearer {key}"},
                          timeout=120)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{topology.logs()}"
    [result] = response.json()["results"]
    assert (result["score"], result["status"]) == (0.5, "ok"), result
    assert request_count(sandbox.url, "sandbox", "/v1/tests") >= 1


def test_rubric_job_runs_on_the_worker_through_redis(topology: Topology) -> None:
    rubric_rm, worker = topology.running["rubric_rm"], topology.running["worker"]
    project_id = run_cli(["projects", "create", "jobs"], topology.env, topology.workdir).strip().splitlines()[-1]
    key = run_cli(["keys", "create", "--role", "trainer", "--project", project_id], topology.env,
                  topology.workdir).strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    items = [{"instruction": "2+2?", "response": "4" if i % 2 else "5 WRONG", "rubric_text": RUBRIC_TEXT}
             for i in range(8)]
    created = httpx.post(rubric_rm.url + "/v1/jobs", json={"project_id": project_id, "kind": "judge_pointwise",
                                                           "items": items}, headers=headers, timeout=60)
    assert created.status_code == 202, f"{created.text}\n{topology.logs()}"
    job_id = created.json()["id"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.get(f"{rubric_rm.url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        if body["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert body["state"] == "succeeded", f"{body}\n{topology.logs()}"
    assert body["done"] == body["total"] == 8 and body["progress"] == 1.0
    assert [r["status"] for r in body["results"]] == ["ok"] * 8
    scores = [r["score"] for r in body["results"]]
    assert scores[1] > scores[0]  # the double passes the right answer's rules and fails the wrong one's
    # The worker process ran it (taken from Redis), not the API process.
    assert "rubric_rm.run_job" in worker.log.read_text(errors="replace")
    assert "rubric_rm.run_job" not in rubric_rm.log.read_text(errors="replace")

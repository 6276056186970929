"""Observability across real processes: one request id from the gateway process to the verifier
process and from a submitting process into a Celery worker, JSON log lines from uvicorn and Celery,
and the Celery queue depth read from a real Redis.

Services run as `rewardhub serve …` / `rewardhub worker` processes (as tests/e2e/test_topology.py
starts them) on the real PostgreSQL; Celery uses the real Redis at 127.0.0.1:6379, database 12.
Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import reset_settings_cache
from services.common.tasks import make_celery
from tests.conftest import Tenant, bearer, flushed_redis

pytestmark = [pytest.mark.slow]

CLI = Path(sys.executable).with_name("rewardhub")
REDIS_DB12_URL = os.environ.get("REWARDHUB_TEST_REDIS_DB12_URL", "redis://127.0.0.1:6379/12")
READY_TIMEOUT_S = 180.0  # cold imports on a loaded two-core machine
# Celery's own default log format ("[2026-01-01 12:00:00,000: INFO/MainProcess] ..."): never wanted.
CELERY_OWN_FORMAT = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: [A-Z]+/")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except AssertionError:
            raise
        except Exception as exc:  # a server still starting
            last = exc
        if last and not isinstance(last, Exception):
            found: T = last
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


class Process:
    """A `rewardhub` process in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as sink:
            self.proc = subprocess.Popen([str(CLI), *args], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[[str, list[str], dict[str, str]], Process]]:
    processes: list[Process] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> Process:
        process = Process(args, env, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    yield start
    for process in reversed(processes):
        process.stop()


def wait_ready(process: Process, url: str) -> None:
    def ready() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"exited with {process.proc.returncode}:\n{process.text()[-3000:]}")
        return httpx.get(url + "/readyz", timeout=2).status_code == 200

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"not ready after {READY_TIMEOUT_S:.0f} s:\n{process.text()[-3000:]}")


def assert_every_line_is_json(process: Process) -> None:
    lines = [line for line in process.text().splitlines() if line.strip()]
    assert lines, "no output at all"
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, f"non-JSON lines in {process.log_path.name}: {not_json[:5]}"
    for line in lines:
        json.loads(line)


@pytest.fixture
def redis12() -> Iterator[str]:
    """Redis database 12 on the shared server, flushed before and after."""
    with flushed_redis(REDIS_DB12_URL) as url:
        yield url


# ------------------------------------------------------------------------- gateway -> verifier

@pytest.mark.postgres
def test_a_request_id_follows_a_reward_request_from_the_gateway_process_to_the_verifier_process(
        postgres_tenant: Tenant, started: Callable[[str, list[str], dict[str, str]], Process]) -> None:
    verifier_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "REWARDHUB_LOG_JSON": "true", "REWARDHUB_LOG_LEVEL": "INFO",
           "REWARDHUB_VERIFIER_WORKERS": "1", "REWARDHUB_VERIFIER_URL": f"http://127.0.0.1:{verifier_port}"}
    env.pop("REDIS_URL", None)
    verifier = started("verifier", ["serve", "verifier", "--host", "127.0.0.1", "--port", str(verifier_port)], env)
    gateway = started("gateway", ["serve", "gateway", "--host", "127.0.0.1", "--port", str(gateway_port)], env)
    wait_ready(verifier, f"http://127.0.0.1:{verifier_port}")
    wait_ready(gateway, f"http://127.0.0.1:{gateway_port}")

    body = {"spec": {"type": "math"}, "items": [{"id": "a", "completion": "so \\boxed{1/2}", "ground_truth": "0.5"}]}
    response = httpx.post(f"http://127.0.0.1:{gateway_port}/v1/rewards", json=body, timeout=120,
                          headers={**bearer(postgres_tenant.keys["trainer"]), "x-request-id": "trace-abc-1"})
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == ["trace-abc-1"]

    def access_line(process: Process, path: str) -> dict[str, Any] | None:
        return next((line for line in process.json_lines() if line["logger"] == "uvicorn.access"
                     and path in line["message"] and line["request_id"] == "trace-abc-1"), None)

    gateway_line = wait_for(lambda: access_line(gateway, "/v1/rewards"), 30, "the gateway's access line")
    verifier_line = wait_for(lambda: access_line(verifier, "/v1/grade"), 30, "the verifier's access line")
    assert (gateway_line["service"], verifier_line["service"]) == ("gateway", "verifier")
    assert "200" in gateway_line["message"] and "200" in verifier_line["message"]
    # uvicorn's own start-up and access lines are JSON like every other line of both processes.
    assert any(line["logger"] == "uvicorn.error" for line in gateway.json_lines())
    assert_every_line_is_json(gateway)
    assert_every_line_is_json(verifier)


# ------------------------------------------------------------------------------------- Celery

SUBMIT_SCRIPT = """
import sys
from services.common import tasks
from services.common.logging import request_id_var

request_id_var.set(sys.argv[1])
if sys.argv[2] == "submit":
    print(tasks.submit(tasks.ping, "traced").id)
else:  # a plain publish, as a task queueing another does
    print(tasks.ping.apply_async(args=["traced"]).id)
"""


@pytest.mark.redis
@pytest.mark.parametrize("how", ["submit", "apply_async"])
def test_a_celery_task_logs_with_the_request_id_of_whoever_submitted_it(
        sqlite_tenant: Tenant, redis12: str, tmp_path: Path, how: str,
        started: Callable[[str, list[str], dict[str, str]], Process]) -> None:
    env = {**os.environ, "REDIS_URL": redis12, "REWARDHUB_LOG_JSON": "true", "REWARDHUB_LOG_LEVEL": "INFO"}
    worker = started("worker", ["worker", "--pool", "prefork", "--concurrency", "1"], env)
    submitted = subprocess.run([sys.executable, "-c", SUBMIT_SCRIPT, "celery-trace-7", how], env=env,
                               capture_output=True, text=True, timeout=120, check=True)
    task_id = submitted.stdout.strip().splitlines()[-1]

    def traced_line() -> dict[str, Any] | None:
        if worker.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.proc.returncode}:\n{worker.text()[-3000:]}")
        return next((line for line in worker.json_lines() if line["logger"] == "celery.app.trace"
                     and task_id in line["message"] and "succeeded" in line["message"]), None)

    line = wait_for(traced_line, 120, "the worker's 'succeeded' line")
    assert make_celery(redis12).AsyncResult(task_id).get(timeout=30)["payload"] == "traced"
    assert line["request_id"] == "celery-trace-7" and line["service"] == "worker"
    # Celery's own log lines (consumer, worker) go through the JSON handler, not Celery's formatter, and
    # nothing else (a banner, a raw warning) is written between them.
    text = worker.text()
    assert any(json_line["logger"].startswith("celery.worker") for json_line in worker.json_lines()), text[-3000:]
    assert not [raw for raw in text.splitlines() if CELERY_OWN_FORMAT.match(raw)], text[-3000:]
    assert_every_line_is_json(worker)


@pytest.mark.redis
def test_celery_queue_depth_is_read_from_redis_at_scrape_time(isolated_env: Path, redis12: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.app_factory import create_service_app

    producer = make_celery(redis12)
    for n in range(3):  # no worker consumes them
        producer.send_task("rewardhub.ping", args=[str(n)])
    monkeypatch.setenv("REDIS_URL", redis12)
    reset_settings_cache()
    with TestClient(create_service_app("test", [], title="test")) as client:
        text = client.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("rewardhub_celery_queue_depth", (("queue", "celery"),))] == 3
    assert samples[("rewardhub_celery_broker_up", ())] == 1


@pytest.mark.redis
def test_a_separate_worker_serves_the_task_outcomes_of_its_pool_processes(
        sqlite_tenant: Tenant, redis12: str, started: Callable[[str, list[str], dict[str, str]], Process]) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis12, "REWARDHUB_WORKER_METRICS_PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = started("worker", ["worker", "--pool", "prefork", "--concurrency", "2"], env)
    ids = [subprocess.run([sys.executable, "-c", SUBMIT_SCRIPT, f"outcome-{n}", "submit"], env=env,
                          capture_output=True, text=True, timeout=120, check=True).stdout.strip().splitlines()[-1]
           for n in range(3)]
    results = make_celery(redis12)
    assert all(results.AsyncResult(task_id).get(timeout=120)["payload"] == "traced" for task_id in ids)

    def successes() -> float | None:
        if worker.proc.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.proc.returncode}:\n{worker.text()[-3000:]}")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                     if sample.name == "rewardhub_celery_tasks_total"
                     and sample.labels == {"task": "rewardhub.ping", "outcome": "success"}), None)

    # Summed over both pool processes, whichever ran which task.
    assert wait_for(successes, 60, "the worker's task outcome counter") == 3.0

"""Fault-injection harness: a private redis-server, real `rewardhub worker` / `rewardhub serve` processes,
and a counting judge double.

Each test starts its OWN redis-server on a free loopback port (never the shared 6379 one) so it can
stop and restart it, and its own worker processes; the database is the shared PostgreSQL through
``postgres_tenant`` (a fresh database per test). Nothing here relies on sleeps for correctness:
every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.common.llm.scripted import ScriptedLLMServer, ScriptedReply, last_user_text

CLI = Path(sys.executable).with_name("rewardhub")
RUBRIC_TEXT = "- states the correct result\nPrinciples:\n- concise"
ITEM = re.compile(r"ITEM-(\d+)")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # e.g. the database or a server still starting
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


class RedisServer:
    """A redis-server of this test's own, on a free loopback port, that can be stopped and restarted."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.starts += 1
        log = open(self.log_dir / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            wait_for(client.ping, 20, f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class ServiceProcess:
    """A rewardhub process (`worker` or `serve …`) in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(CLI), *args], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker's main process and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


class Processes:
    """Starts processes for one test and stops whatever is left at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceProcess] = []

    def env(self, redis: RedisServer, llm_url: str = "", **extra: str) -> dict[str, str]:
        env = {**os.environ, "REDIS_URL": redis.url, "REWARDHUB_DATA_DIR": str(self.tmp_path / "data"),
               "REWARDHUB_LOG_JSON": "false", "REWARDHUB_LLM_BASE_URL": llm_url, "REWARDHUB_LLM_MODEL": "judge-double",
               "REWARDHUB_LLM_TIMEOUT_S": "20", "REWARDHUB_LLM_MAX_RETRIES": "1",
               "REWARDHUB_JOB_HEARTBEAT_S": "1", "REWARDHUB_JOB_STALE_AFTER_S": "4",
               "REWARDHUB_JOB_SWEEP_INTERVAL_S": "1", "REWARDHUB_JOB_RESUBMIT_AFTER_S": "3",
               "REWARDHUB_CELERY_VISIBILITY_TIMEOUT_S": "30"}
        env.update(extra)
        return env

    def worker(self, env: dict[str, str], name: str = "worker") -> ServiceProcess:
        proc = ServiceProcess(["worker", "--pool", "prefork", "--concurrency", "1"], env,
                              self.tmp_path / f"{name}-{len(self.started)}.log")
        self.started.append(proc)
        return proc

    def serve(self, service: str, port: int, env: dict[str, str]) -> ServiceProcess:
        proc = ServiceProcess(["serve", service, "--host", "127.0.0.1", "--port", str(port)], env,
                              self.tmp_path / f"{service}-{len(self.started)}.log")
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


class CountingJudge:
    """The pointwise judge as a ScriptedLLMServer test double, counting calls per item (``ITEM-<n>``).

    ``requests`` counts every call that reached it; ``answered`` only the judgments it delivered to a
    live caller. ``hold_after`` answered items, further calls wait until ``release()``; ``kill_epoch()``
    (the caller's worker was SIGKILLed) makes the calls still held give up unanswered: their caller is
    dead, so nothing was judged for it.
    """

    def __init__(self, delay_s: float = 0.0, hold_after: int | None = None) -> None:
        self.delay_s = delay_s
        self.hold_after = hold_after
        self.requests: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()
        self.held = 0
        self._epoch = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.server = ScriptedLLMServer(self._script)

    def start(self) -> str:
        return self.server.start()

    def stop(self) -> None:
        self._released.set()
        self.server.stop()

    def release(self) -> None:
        self._released.set()

    def kill_epoch(self) -> None:
        with self._lock:
            self._epoch += 1

    async def _script(self, request: dict[str, Any]) -> ScriptedReply:
        match = ITEM.search(last_user_text(request))
        item = int(match.group(1)) if match else -1
        with self._lock:
            self.requests[item] += 1
            epoch = self._epoch
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.hold_after is not None and sum(self.answered.values()) >= self.hold_after:
            with self._lock:
                self.held += 1
            while not self._released.is_set() and epoch == self._epoch:
                await asyncio.sleep(0.02)
            with self._lock:
                self.held -= 1
        with self._lock:
            if epoch != self._epoch:
                return ScriptedReply.error(503, "caller is gone")
            self.answered[item] += 1
        rules = [{"rule_id": "R1", "passed": item % 2 == 0}]
        return ScriptedReply(text=json.dumps({"rules": rules, "principles": [{"principle_id": "P1", "score": 0.5}]}))


@pytest.fixture
def judge_factory() -> Iterator[Callable[..., CountingJudge]]:
    made: list[CountingJudge] = []

    def make(**kwargs: Any) -> CountingJudge:
        judge = CountingJudge(**kwargs)
        judge.start()
        made.append(judge)
        return judge

    yield make
    for judge in made:
        judge.stop()


def job_items(n: int, first: int = 0) -> list[dict[str, Any]]:
    """``n`` pointwise items tagged ``ITEM-<first + i>`` (give each job of a test its own range)."""
    return [{"instruction": f"Question {first + i}?", "response": f"ITEM-{first + i} answer",
             "rubric_text": RUBRIC_TEXT} for i in range(n)]


def figures(name: str, **values: Any) -> None:
    """Print the test's figures on one line (shown with -s, and in the captured output of a failure)."""
    print(f"\n[reliability] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)

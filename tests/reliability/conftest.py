"""Fault-injection harness: a private redis-server, real `rewardhub worker` / `rewardhub serve` processes,
and a counting judge double.

Each test starts its OWN redis-server on a free loopback port (never the shared 6379 one) so it can
stop and restart it, and its own worker processes; the database is the shared PostgreSQL through
``postgres_tenant`` (a fresh database per test). Nothing here relies on sleeps for correctness:
every wait polls a condition with a deadline.

The fault suite (test_fault_suite.py) goes further: ``own_postgres`` is a PostgreSQL cluster it
initdb's and runs itself (its own port, as an unprivileged account when the tests are root), so it
can restart and stop it; ``module_redis`` its own redis-server; ``fault_topology`` the production
topology (gateway, verifier, rubric_rm, Celery worker, each its own `rewardhub` process) on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.common.llm.scripted import ScriptedLLMServer, ScriptedReply, last_user_text
from tests.conftest import require, unavailable

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
    require(shutil.which("redis-server") is not None, "redis-server is not installed (apt-get install redis-server)")
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


# --------------------------------------------------------------------------------------------
# The fault suite's own infrastructure: a PostgreSQL cluster and a Redis of its own, and the
# production topology (each service its own `rewardhub serve` process) on loopback.

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (Linux /proc); [] when it is gone."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in found if process_state(child) not in ("", "Z")]


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc/<pid>/stat (R running, S sleeping, Z zombie; "" gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]  # after the parenthesised command name, which may hold spaces


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (with initdb and pg_ctl), or None."""
    found = [Path(p) for p in glob.glob(POSTGRES_BIN_GLOB)
             if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    return max(found, key=version) if found else None


class PostgresCluster:
    """A PostgreSQL cluster of the suite's own: ``initdb`` into a temp dir, a free loopback port, trust auth,
    fsync on (the crash scenarios need real durability). It never touches the shared 5432 server.

    PostgreSQL refuses to run as root, so when the tests are root the cluster is owned by and run as the
    unprivileged account tests/security/nonroot.py makes (``rewardhub-test``).
    """

    def __init__(self, bin_dir: Path) -> None:
        from tests.security.nonroot import ensure_account

        self.bin_dir = bin_dir
        self.account = ensure_account() if os.geteuid() == 0 else None
        # Under /tmp (world-traversable), not pytest's 0700 tmp_path: the account must reach its data dir.
        self.root = Path(tempfile.mkdtemp(prefix="rewardhub-fault-pg-", dir="/tmp"))
        if self.account is not None:
            os.chown(self.root, self.account.uid, self.account.gid)
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.restarts = 0

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout_s: float = 120) -> None:
        credentials: dict[str, Any] = {}
        if self.account is not None:
            credentials = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        result = subprocess.run([str(self.bin_dir / argv[0]), *argv[1:]], cwd=self.root, capture_output=True,
                                text=True, timeout=timeout_s, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                **credentials)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                                 f"{self.log()[-3000:]}")

    def _server_options(self) -> str:
        return (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                "-c fsync=on -c synchronous_commit=on -c max_connections=200")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
                  "-o", self._server_options(), "start")
        wait_for(self.accepts_connections, 30, f"PostgreSQL on port {self.port}")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate`` (immediate: no shutdown checkpoint, crash recovery on start)."""
        self.restarts += 1
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60", "-m", mode,
                  "-o", self._server_options(), "restart")
        wait_for(self.accepts_connections, 30, f"PostgreSQL on port {self.port} after a restart")

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-m", mode, "stop")

    def accepts_connections(self) -> bool:
        import psycopg

        with psycopg.connect(self.admin_url, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def accepts_connections_now(self) -> bool:
        """``accepts_connections`` that answers False instead of raising."""
        try:
            return self.accepts_connections()
        except Exception:
            return False

    def create_database(self, name: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no postgres log: {exc}>"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster started by the suite itself (initdb, its own port), removed afterwards."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("a PostgreSQL server installation", f"no initdb/pg_ctl under {POSTGRES_BIN_GLOB}")
    assert bin_dir is not None
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        cluster.remove()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """``own_redis`` for a whole module (its services keep one broker URL across scenarios)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "it is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


FAULT_SERVICES = ("verifier", "rubric_rm", "gateway")  # started in this order; the worker after them
FAULT_SECRET_KEY = "fault-suite-secret-key-not-for-production"
# Short leases and sweeps, so that recovery is measured in seconds rather than production's minutes.
FAULT_SETTINGS = {
    "REWARDHUB_IDEMPOTENCY_LEASE_S": "4", "REWARDHUB_VERIFIER_WORKERS": "2",
    "REWARDHUB_LLM_MODEL": "judge-double", "REWARDHUB_LLM_TIMEOUT_S": "20", "REWARDHUB_LLM_MAX_RETRIES": "1",
    "REWARDHUB_JOB_HEARTBEAT_S": "1", "REWARDHUB_JOB_STALE_AFTER_S": "4", "REWARDHUB_JOB_SWEEP_INTERVAL_S": "1",
    "REWARDHUB_JOB_RESUBMIT_AFTER_S": "3", "REWARDHUB_CELERY_VISIBILITY_TIMEOUT_S": "30",
}


class FaultTopology:
    """gateway, verifier, rubric_rm and the Celery worker, each its own `rewardhub` process with the
    command and environment docker-compose.yml gives it, on fixed loopback ports (so a restarted service
    is found again at the same address), against the suite's own PostgreSQL and Redis."""

    def __init__(self, workdir: Path, database_url: str, redis: RedisServer, llm_url: str) -> None:
        import yaml

        from tests.e2e.test_topology import COMPOSE_FILE, compose_service_for, process_env

        self.workdir = workdir
        self.compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
        self.ports = {name: free_port() for name in FAULT_SERVICES}
        self.commands: dict[str, list[str]] = {}
        self.envs: dict[str, dict[str, str]] = {}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        for name in (*FAULT_SERVICES, "worker"):
            compose_name = (compose_service_for(self.compose, "worker") if name == "worker"
                            else compose_service_for(self.compose, "serve", name))
            env = process_env(self.compose[compose_name].get("environment", {}), database_url=database_url,
                              redis_url=redis.url, data_dir=workdir / "data", urls=urls, llm_url=llm_url)
            self.envs[name] = {**env, "REWARDHUB_SECRET_KEY": FAULT_SECRET_KEY, **FAULT_SETTINGS}
            self.commands[name] = self._local_command(self.compose[compose_name]["command"], self.ports.get(name))
        self.procs: dict[str, ServiceProcess] = {}
        self.starts: Counter[str] = Counter()

    @staticmethod
    def _local_command(command: list[str], port: int | None) -> list[str]:
        argv = list(command)
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        if argv[0] == "worker" and "--concurrency" in argv:
            argv[argv.index("--concurrency") + 1] = "1"  # one job at a time: its pool child is the one to kill
        return argv

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str) -> ServiceProcess:
        self.starts[name] += 1
        proc = ServiceProcess(self.commands[name], self.envs[name],
                              self.workdir / f"{name}-{self.starts[name]}.log")
        self.procs[name] = proc
        return proc

    def wait_ready(self, name: str, timeout_s: float = 120) -> float:
        """Seconds until ``name`` answers /readyz 200 (the worker: a ping task through Redis)."""
        started = time.monotonic()
        proc = self.procs[name]
        if name == "worker":
            from services.common.tasks import make_celery

            app = make_celery(self.envs[name]["REDIS_URL"])

            def pong() -> bool:
                if not proc.alive():
                    raise AssertionError(f"the worker exited:\n{proc.log()[-3000:]}")
                return bool(app.send_task("rewardhub.ping", args=["ready"]).get(timeout=5)["payload"] == "ready")

            wait_for(pong, timeout_s, "the Celery worker to answer a ping")
        else:
            from tests.e2e.test_topology import Running, wait_ready

            wait_ready(Running(name, proc.proc, proc.log_path, self.envs[name], self.ports[name]), timeout_s)
        return time.monotonic() - started

    def kill(self, name: str) -> float:
        """``kill -9`` of the service's whole process group; returns the monotonic time of the kill."""
        self.procs[name].kill()
        return time.monotonic()

    def restart(self, name: str) -> float:
        """Start ``name`` again (after a kill) and wait until it is ready; returns the seconds it took."""
        if self.procs[name].alive():
            self.procs[name].stop()
        self.start(name)
        return self.wait_ready(name)

    def logs(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {name} ---\n{proc.log()[-chars:]}" for name, proc in self.procs.items())

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent (grader pool)


@pytest.fixture(scope="module")
def fault_judge() -> Iterator[CountingJudge]:
    """One pointwise judge double for the module's rubric_rm and worker (each scenario its own ITEM range)."""
    judge = CountingJudge()
    judge.start()
    yield judge
    judge.stop()


@pytest.fixture(scope="module")
def fault_database(own_postgres: PostgresCluster) -> Iterator[tuple[str, Any]]:
    """A migrated database on the suite's own cluster with tests.conftest's tenant; this test process
    reads it (``session_scope``) to count what the services stored."""
    from services.common.db import dispose_engines
    from services.common.settings import reset_settings_cache
    from tests.conftest import make_tenant

    url = own_postgres.create_database("rewardhub_fault")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("REWARDHUB_") and not name.startswith("REWARDHUB_TEST_") \
                    and name != "REWARDHUB_REQUIRE_SERVICES":
                patch.delenv(name)
        patch.delenv("REDIS_URL", raising=False)
        patch.setenv("DATABASE_URL", url)
        patch.setenv("REWARDHUB_DATA_DIR", str(own_postgres.root / "client-data"))
        dispose_engines()
        reset_settings_cache()
        try:
            yield url, make_tenant()
        finally:
            dispose_engines()
            reset_settings_cache()


@pytest.fixture(scope="module")
def fault_topology(fault_database: tuple[str, Any], module_redis: RedisServer, fault_judge: CountingJudge,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultTopology]:
    """The production topology on loopback (see ``FaultTopology``), every process ready."""
    topology = FaultTopology(tmp_path_factory.mktemp("topology"), fault_database[0], module_redis,
                             fault_judge.server.base_url)
    try:
        for name in (*FAULT_SERVICES, "worker"):
            topology.start(name)
        for name in (*FAULT_SERVICES, "worker"):
            topology.wait_ready(name)
        yield topology
    finally:
        topology.stop_all()

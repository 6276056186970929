"""Training runs are supervised durably: the trainer service is SIGKILLed mid-run, run workers are
SIGKILLed, watchers race. Real processes (`rewardhub serve trainer`, run workers, a Celery worker) on
a real PostgreSQL; tiny random models. Each test prints its figures (pytest -s).

This test process makes itself a child subreaper, standing in for the init (tini, systemd) of a
production host: a worker whose service was killed is re-parented to it, and it reaps that worker
like init would. The zombie property under test is the service's own: a worker that exits while the
service that launched it is alive is waited for by that service.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.common.db import session_scope, utcnow
from services.common.models import ApiKey
from services.common.settings import reset_settings_cache
from services.trainer import runs, supervisor
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun
from services.trainer.worker import EXIT_LEASE_LOST
from tests.conftest import Tenant, bearer
from tests.integration.test_trainer_service import DIGITS, run_config
from tests.reliability.conftest import Processes, ServiceProcess, figures, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.postgres, pytest.mark.timeout(240)]

HEARTBEAT_S = 0.5
STALE_AFTER_S = 6.0
WATCH_INTERVAL_S = 0.5
# Detection may take the bound, one watch round, and scheduling slack on a busy 2-core machine.
DETECTION_LIMIT_S = STALE_AFTER_S + 2 * WATCH_INTERVAL_S + 4.0
PR_SET_CHILD_SUBREAPER = 36
SUPERVISION_ENV = {"REWARDHUB_TRAINER_HEARTBEAT_S": str(HEARTBEAT_S),
                   "REWARDHUB_TRAINER_STALE_AFTER_S": str(STALE_AFTER_S),
                   "REWARDHUB_TRAINER_WATCH_INTERVAL_S": str(WATCH_INTERVAL_S)}


# ----------------------------------------------------------------------------------- helpers

def _prctl_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@pytest.fixture
def as_init() -> Iterator[None]:
    """Adopt orphaned descendants (as init would) for the test's duration."""
    _prctl_subreaper(True)
    yield
    _prctl_subreaper(False)


@pytest.fixture
def supervised_env(postgres_tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of this test's services and of its in-process watchers (short heartbeats)."""
    for name, value in SUPERVISION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REWARDHUB_GATEWAY_URL", raising=False)  # workers score in-process, same database
    reset_settings_cache()
    return {**os.environ, "REWARDHUB_LOG_JSON": "false"}


def proc_state(pid: int) -> str | None:
    """The State letter of /proc/<pid>/status (R, S, Z, ...), or None when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def reap_adopted(pid: int, timeout_s: float = 60) -> int:
    """Wait (as init) for a worker re-parented to this process; its exit status."""
    assert parent_of(pid) == os.getpid(), f"worker {pid} was not re-parented to the subreaper"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        time.sleep(0.05)
    raise AssertionError(f"adopted worker {pid} did not exit within {timeout_s} s")


def assert_gone_not_zombie(pid: int, what: str, timeout_s: float = 20) -> None:
    wait_for(lambda: proc_state(pid) is None, timeout_s,
             f"{what} (pid {pid}) to be reaped; state {proc_state(pid)!r}")


def row(run_id: str) -> TrainingRun:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def wait_row(run_id: str, condition: Callable[[TrainingRun], bool], timeout_s: float, what: str) -> TrainingRun:
    found: list[TrainingRun] = []

    def check() -> bool:
        current = row(run_id)
        if condition(current):
            found.append(current)
            return True
        return False

    try:
        wait_for(check, timeout_s, what, interval_s=0.05)
    except AssertionError as exc:
        last = row(run_id)
        raise AssertionError(f"{exc}; the run: status={last.status.value} attempt={last.attempt} "
                             f"supervisor={last.supervisor} step={last.current_step} error={last.error!r}") from None
    return found[-1]


def steps_of(run_id: str) -> list[RunStepMetrics]:
    with session_scope() as session:
        rows = list(session.scalars(select(RunStepMetrics).where(RunStepMetrics.run_id == run_id)
                                    .order_by(RunStepMetrics.step)))
        session.expunge_all()
        return rows


class Trainer:
    """`rewardhub serve trainer` as its own process (own process group), with a client for it."""

    def __init__(self, processes: Processes, env: dict[str, str], key: str) -> None:
        self.port = free_port()
        self.service: ServiceProcess = processes.serve("trainer", self.port, env)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=bearer(key), timeout=30)
        wait_for(lambda: self.client.get("/healthz").status_code == 200, 60, "the trainer service to start")

    def start_run(self, **overrides: Any) -> str:
        created = self.client.post("/v1/runs", json={"config": run_config(**overrides)})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def kill(self) -> None:
        self.service.kill()


@pytest.fixture
def trainer_factory(processes: Processes, supervised_env: dict[str, str], postgres_tenant: Tenant,
                    as_init: None) -> Iterator[Callable[..., Trainer]]:
    made: list[Trainer] = []

    def make(**extra_env: str) -> Trainer:
        trainer = Trainer(processes, {**supervised_env, **extra_env}, postgres_tenant.keys["trainer"])
        if not made:
            upload = trainer.client.post(f"/v1/projects/{postgres_tenant.project_a}/datasets",
                                         params={"name": "digits"}, content=DIGITS.encode(),
                                         headers={"Content-Type": "application/jsonl"})
            assert upload.status_code == 201, upload.text
        made.append(trainer)
        return trainer

    yield make
    for trainer in made:
        trainer.client.close()
    _stop_stray_workers()


def _stop_stray_workers() -> None:
    """End (and reap) any run worker this test left training: every unfinished run's worker pid."""
    with session_scope() as session:
        pids = [pid for pid in session.scalars(select(TrainingRun.worker_pid).where(
            TrainingRun.status.in_([RunStatus.queued, RunStatus.running]))) if pid is not None]
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # only a run worker, never a recycled pid
            if b"services.trainer.worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def worker_of(run_id: str) -> int:
    started = wait_row(run_id, lambda r: r.worker_pid is not None and r.current_step >= 1, 120,
                       f"run {run_id} to train a step")
    assert started.worker_pid is not None
    return started.worker_pid


# ------------------------------------------------------------------------------------- tests

def test_runs_outlive_a_killed_trainer_service_and_cancel_still_works(
        trainer_factory: Callable[..., Trainer], postgres_tenant: Tenant) -> None:
    first = trainer_factory()
    finishing = first.start_run(max_steps=40)
    cancelling = first.start_run(max_steps=10_000, checkpoint_every=5)
    pids = {finishing: worker_of(finishing), cancelling: worker_of(cancelling)}

    for run_id, pid in pids.items():  # the key travels on stdin only
        with session_scope() as session:
            prefix = session.get_one(ApiKey, session.get_one(TrainingRun, run_id).api_key_id).prefix
        exposed = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        assert prefix.encode() not in exposed, "the run's key must not be in the worker's argv or environment"

    first.kill()
    killed_at, step_at_kill = time.monotonic(), row(finishing).current_step
    assert step_at_kill < 40
    for run_id, pid in pids.items():
        assert proc_state(pid) not in (None, "Z"), f"run {run_id}'s worker died with its service"
    wait_row(finishing, lambda r: r.current_step > step_at_kill, 60, "the run to train on with no service up")

    second = trainer_factory()
    restarted_s = time.monotonic() - killed_at
    assert second.client.get(f"/v1/runs/{finishing}").json()["status"] in ("running", "succeeded")
    assert second.client.post(f"/v1/runs/{cancelling}/cancel").status_code == 202
    cancelled = wait_row(cancelling, lambda r: r.status.finished, 120, "the cancel to reach the old worker")
    done = wait_row(finishing, lambda r: r.status.finished, 180, "the surviving run to finish")
    assert cancelled.status is RunStatus.cancelled and cancelled.checkpoint, (cancelled.status, cancelled.error)
    assert done.status is RunStatus.succeeded, (done.status, done.error)
    assert (done.attempt, done.auto_resumes, done.worker_pid) == (1, 0, pids[finishing]), "the same worker finished"
    assert [s.step for s in steps_of(finishing)] == list(range(1, 41))
    for run_id, pid in pids.items():
        status = reap_adopted(pid)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (run_id, status)
    with session_scope() as session:
        revoked = [session.get_one(ApiKey, session.get_one(TrainingRun, r).api_key_id).revoked_at for r in pids]
    assert all(revoked), "each run's key is revoked when it ends"
    figures("trainer service kill -9", runs=2, steps_after_kill=40 - step_at_kill,
            service_restart_s=f"{restarted_s:.1f}", finished=done.status.value, cancelled=cancelled.status.value)


def test_a_killed_worker_fails_its_run_at_once_or_within_the_heartbeat_bound(
        trainer_factory: Callable[..., Trainer]) -> None:
    service = trainer_factory()
    # 1. The launching service is alive: it waits for its worker, sees it die, fails the run at once.
    direct = service.start_run(max_steps=10_000)
    pid = worker_of(direct)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    failed = wait_row(direct, lambda r: r.status.finished, DETECTION_LIMIT_S, "the run to be failed")
    direct_s = time.monotonic() - killed
    assert failed.status is RunStatus.failed and "killed by SIGKILL" in (failed.error or ""), failed.error
    assert_gone_not_zombie(pid, "the killed worker")

    # 2. Its service was killed and another one watches: only the stale heartbeat tells.
    orphan = service.start_run(max_steps=10_000)
    pid = worker_of(orphan)
    service.kill()
    trainer_factory()
    assert row(orphan).status is RunStatus.running
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    status = reap_adopted(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the worker held its lease until killed"
    last_beat = row(orphan).heartbeat_at  # the worker is gone: this stamp is its last
    assert last_beat is not None, "the run was ended before its heartbeat went stale"
    failed = wait_row(orphan, lambda r: r.status.finished, DETECTION_LIMIT_S + 10, "the stale run to be failed")
    stale_s = time.monotonic() - killed
    assert failed.status is RunStatus.failed, failed.status
    assert "stopped heartbeating" in (failed.error or "") and f"/v1/runs/{orphan}/resume" in (failed.error or "")
    # The rule, on the database's own stamps: the watcher ended the run only once its heartbeat was
    # STALE_AFTER_S old. How soon after that it noticed is a figure, not a bound (no timed assertion).
    assert failed.finished_at is not None and failed.finished_at - last_beat >= timedelta(seconds=STALE_AFTER_S)
    figures("run worker kill -9 -> failed", launcher_alive_detection_s=f"{direct_s:.2f}",
            heartbeat_detection_s=f"{stale_s:.2f}", bound_s=STALE_AFTER_S, heartbeat_s=HEARTBEAT_S)


def test_a_killed_worker_is_resumed_once_from_its_checkpoint_by_racing_services(
        trainer_factory: Callable[..., Trainer]) -> None:
    resume = {"REWARDHUB_TRAINER_RESUME_DEAD_RUNS": "true"}
    launcher = trainer_factory(**resume)
    # The two replicas that race for the run are up before it starts: started after, on a slow machine
    # the 30 steps could all be done before the kill below.
    watchers = [trainer_factory(**resume), trainer_factory(**resume)]
    run_id = launcher.start_run(max_steps=30, checkpoint_every=1)
    pid = worker_of(run_id)
    launcher.kill()
    wait_row(run_id, lambda r: r.current_step >= 3, 120, "three steps")
    step_at_kill = row(run_id).current_step
    os.kill(pid, signal.SIGKILL)
    killed, killed_at = time.monotonic(), utcnow()
    status = reap_adopted(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the worker held its lease until killed"
    wait_row(run_id, lambda r: r.attempt == 2, DETECTION_LIMIT_S, "the dead attempt to be requeued")
    detection_s = time.monotonic() - killed
    resumed = wait_row(run_id, lambda r: r.attempt == 2 and r.worker_pid is not None, 60,
                       "the run to be resumed by a new worker")
    relaunch_s = time.monotonic() - killed
    done = wait_row(run_id, lambda r: r.status.finished, 180, "the resumed run to finish")
    assert done.status is RunStatus.succeeded, (done.status, done.error)
    assert (done.attempt, done.auto_resumes) == (2, 1) and done.worker_pid != pid and done.error is None
    steps = steps_of(run_id)
    assert [s.step for s in steps] == list(range(1, 31)), "every step once, none lost"
    redone = [s.step for s in steps if s.created_at > killed_at]
    assert redone and redone[0] >= step_at_kill, (step_at_kill, redone[:3], "it must go on from its checkpoint")
    logs = "".join(w.service.log() for w in watchers)
    assert logs.count(f"run {run_id} attempt 1: ") == 1, "exactly one watcher requeued the run"
    assert logs.count(f"run {run_id}: attempt 2 launched") == 1, "exactly one watcher launched it"
    assert_gone_not_zombie(resumed.worker_pid or 0, "the resumed worker (its launcher waits for it)")
    figures("run worker kill -9 -> resumed", detection_s=f"{detection_s:.2f}",
            new_worker_running_s=f"{relaunch_s:.2f}", bound_s=STALE_AFTER_S, step_at_kill=step_at_kill,
            resumed_at_step=redone[0], watchers=2, requeues=1, launches=1)


def test_a_worker_that_lost_its_lease_stops_at_once_and_writes_nothing(
        trainer_factory: Callable[..., Trainer]) -> None:
    """Split brain: a watcher declared a live worker dead (e.g. it was cut off from the database)."""
    service = trainer_factory()
    run_id = service.start_run(max_steps=10_000)
    pid = worker_of(run_id)
    assert runs.end_dead_attempt(run_id, 1, "test: a watcher declared this worker dead") == "failed"
    taken, step_at_takeover = time.monotonic(), row(run_id).current_step
    assert_gone_not_zombie(pid, "the worker that lost its lease")  # it exits; its launcher reaps it
    exit_s = time.monotonic() - taken
    final = row(run_id)
    assert final.status is RunStatus.failed and (final.error or "").startswith("test: a watcher declared this")
    assert final.current_step == step_at_takeover and steps_of(run_id)[-1].step == step_at_takeover
    # Whatever it tries first finds the lease gone: a heartbeat, a step's row, or (its key was revoked
    # with the takeover) a reward call whose 401 ends the attempt, whose end is then not recorded.
    log = (Path(final.output_dir) / runs.WORKER_LOG).read_text()
    assert "lost its lease" in log, log[-2000:]
    figures("lease lost", worker_exit_s=f"{exit_s:.2f}", heartbeat_s=HEARTBEAT_S)


# ----------------------------------------------- watchers racing on the rows (no training needed)

def _stale_runs(tenant: Tenant, count: int, **values: Any) -> list[str]:
    """``count`` running runs of a real, checked config whose (fictitious) workers last beat a minute
    ago on another host, each with a minted key."""
    from services.common.models import Project
    from services.trainer import confine, datasets
    from trainer.config import parse_config

    ids: list[str] = []
    with session_scope() as session:
        project = session.get_one(Project, tenant.project_a)
        datasets.store(session, project.id, datasets.Upload(name="digits", content=DIGITS.encode()))
        config = runs.checked_config(session, project.id, parse_config(run_config()))
        for _ in range(count):
            run = TrainingRun(project_id=project.id, config=config, output_dir="", max_steps=3,
                              status=RunStatus.running, attempt=1, supervisor="elsewhere:1", worker_pid=1,
                              worker_host="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=60), **values)
            session.add(run)
            session.flush()
            run.output_dir = str(confine.run_dir(project.id, run.id))
            runs.mint_key(session, run, project)
            ids.append(run.id)
    return ids


def _race(workers: int, action: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def one(index: int) -> None:
        barrier.wait()
        results[index] = action()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_racing_watchers_end_each_dead_run_once(supervised_env: dict[str, str], postgres_tenant: Tenant) -> None:
    dead = _stale_runs(postgres_tenant, 40)
    alive = _stale_runs(postgres_tenant, 1)[0]
    with session_scope() as session:
        session.get_one(TrainingRun, alive).heartbeat_at = utcnow() + timedelta(seconds=30)  # beat meanwhile
    counts = _race(4, supervisor.sweep)
    assert sum(c["failed"] for c in counts) == 40 and sum(c["resumed"] for c in counts) == 0, counts
    for run_id in dead:
        ended = row(run_id)
        assert ended.status is RunStatus.failed and "stopped heartbeating" in (ended.error or "")
        assert ended.attempt == 1
    assert row(alive).status is RunStatus.running, "a run whose worker beat is left alone"
    with session_scope() as session:
        keys = session.scalars(select(ApiKey).join(TrainingRun, TrainingRun.api_key_id == ApiKey.id)
                               .where(TrainingRun.id.in_(dead))).all()
        assert len(keys) == 40 and all(k.revoked_at is not None for k in keys)
    # A heartbeat newer than the sweep's cutoff wins the compare-and-set even after the scan.
    late = _stale_runs(postgres_tenant, 1)[0]
    assert runs.end_dead_attempt(late, 1, "test", stale_before=utcnow() - timedelta(seconds=120)) is None
    figures("racing watchers (fail)", watchers=4, dead_runs=40, transitions=sum(c["failed"] for c in counts))


def test_racing_watchers_resume_and_launch_each_dead_run_once(supervised_env: dict[str, str],
                                                               postgres_tenant: Tenant,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_TRAINER_RESUME_DEAD_RUNS", "true")
    monkeypatch.setenv("REWARDHUB_TRAINER_MAX_AUTO_RESUMES", "1")
    reset_settings_cache()
    dead = _stale_runs(postgres_tenant, 30)
    counts = _race(4, supervisor.sweep)
    assert sum(c["resumed"] for c in counts) == 30 and sum(c["failed"] for c in counts) == 0, counts
    for run_id in dead:
        queued = row(run_id)
        assert (queued.status, queued.attempt, queued.auto_resumes, queued.supervisor) == \
            (RunStatus.queued, 2, 1, None)
    tickets = [t for run_id in dead for t in _race(4, functools.partial(runs.claim_pending, run_id)) if t is not None]
    assert sorted(t.run_id for t in tickets) == sorted(dead), "each requeued run is claimed exactly once"
    assert all(t.attempt == 2 and t.api_key for t in tickets) and "api_key" not in repr(tickets[0])

    # The claimed attempts die too (no worker ever starts): the maximum of automatic resumes is reached.
    with session_scope() as session:
        for run_id in dead:
            session.get_one(TrainingRun, run_id).heartbeat_at = utcnow() - timedelta(seconds=60)
    counts = _race(2, supervisor.sweep)
    assert sum(c["failed"] for c in counts) == 30, counts
    given_up = row(dead[0])
    assert given_up.status is RunStatus.failed and "never started" in (given_up.error or "")
    assert "gave up after 1 automatic resumes" in (given_up.error or "")


def test_a_dead_worker_of_a_run_being_cancelled_ends_it_cancelled(supervised_env: dict[str, str],
                                                                  postgres_tenant: Tenant) -> None:
    run_id = _stale_runs(postgres_tenant, 1, cancel_requested=True)[0]
    assert supervisor.sweep()["cancelled"] == 1
    assert row(run_id).status is RunStatus.cancelled


def test_the_celery_worker_sweeps_dead_runs(supervised_env: dict[str, str], postgres_tenant: Tenant,
                                           own_redis: Any, tmp_path: Path) -> None:
    """The sweeper registered by services.trainer.supervisor runs in a real Celery worker process."""
    env = {**supervised_env, "REDIS_URL": own_redis.url, "REWARDHUB_JOB_SWEEP_INTERVAL_S": "0.5"}
    # `rewardhub worker` imports TASK_MODULES (services/common/tasks.py); until that list names
    # services.trainer.supervisor, this worker is told to import it.
    argv = [str(Path(sys.executable).with_name("celery")), "-A", "services.common.tasks:celery_app", "worker",
            "--pool", "solo", "--include", "services.trainer.supervisor", "--without-mingle", "--without-gossip"]
    with (tmp_path / "celery.log").open("wb") as log:
        worker = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dead = _stale_runs(postgres_tenant, 3)
        started = time.monotonic()
        for run_id in dead:
            ended = wait_row(run_id, lambda r: r.status.finished, 60, "the Celery sweeper to fail the dead run")
            assert ended.status is RunStatus.failed and "stopped heartbeating" in (ended.error or ""), ended.error
        swept_s = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    figures("celery sweeper", dead_runs=3, swept_within_s=f"{swept_s:.1f}")


def test_a_worker_cut_off_from_the_database_gives_up_its_lease(tmp_path: Path) -> None:
    """A worker that cannot renew its heartbeat for the stale bound exits: the watchers own the run by then."""
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/gone",
           "REWARDHUB_DATA_DIR": str(tmp_path), "REWARDHUB_LOG_JSON": "false"}
    training = ("import threading\nfrom services.trainer.worker import Heartbeat, Lease\n"
                "Heartbeat(Lease('r1', 1), interval_s=0.2, stale_after_s=1.5).start()\n"
                "threading.Event().wait()  # the main thread trains on, unaware\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", training], env=env, capture_output=True, text=True, timeout=60)
    gave_up_s = time.monotonic() - started
    assert done.returncode == EXIT_LEASE_LOST, (done.returncode, done.stderr[-2000:])
    assert "lost its lease" in done.stderr and "heartbeat failed" in done.stderr
    # When it gives up is pinned by the fake-clock test below; here it is a figure.
    figures("worker cut off from the database", gave_up_after_s=f"{gave_up_s:.2f}", stale_after_s=1.5)


class _FakeClock:
    """``time.monotonic`` for the heartbeat loop, advanced only by its waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class _Lost(Exception):
    pass


def _heartbeat_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch, beats: list[bool | None]) -> tuple[float, int]:
    """Run Heartbeat's loop where each wait advances a fake clock by the interval and each beat is the
    next of ``beats`` (True: renewed, None: the database is unreachable). Returns (fake time lost, beats tried)."""
    from sqlalchemy.exc import OperationalError

    from services.trainer import worker

    clock = _FakeClock()
    monkeypatch.setattr(worker, "time", clock)
    heartbeat = worker.Heartbeat(worker.Lease("r1", 1), interval_s=0.25, stale_after_s=1.5)
    tried = iter(beats)

    class Waits:
        def wait(self, interval: float) -> bool:
            clock.now += interval
            return False

        def is_set(self) -> bool:
            return False

    def beat() -> bool:
        outcome = next(tried)
        if outcome is None:
            raise OperationalError("UPDATE training_runs", {}, Exception("connection refused"))
        return outcome

    def lose(why: str) -> None:
        raise _Lost(why)

    monkeypatch.setattr(heartbeat, "_stop", Waits())
    monkeypatch.setattr(heartbeat, "beat", beat)
    monkeypatch.setattr(heartbeat, "_lose", lose)
    with pytest.raises(_Lost, match="no heartbeat could be written for 2 s"):
        heartbeat._loop()
    return clock.now, len(beats) - len(list(tried))


def test_a_heartbeat_gives_up_only_after_the_stale_bound_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # interval 0.25, bound 1.5: failures at 0.25, 0.5, ..., 1.5 are within the bound (1.5 is not
    # *more* than 1.5); the one at 1.75 is the first past it: 7 failed beats, lost at 1.75.
    lost_at, tried = _heartbeat_on_a_fake_clock(monkeypatch, [None] * 20)
    assert (lost_at, tried) == (1.75, 7)
    # A renewal at 0.75 restarts the count: the next failures at 1.0 ... 2.25 are within 1.5 of it;
    # the one at 2.5 is past it. Beats tried: 2 failed, 1 renewed, 7 failed = 10.
    lost_at, tried = _heartbeat_on_a_fake_clock(monkeypatch, [None, None, True] + [None] * 20)
    assert (lost_at, tried) == (2.5, 10)

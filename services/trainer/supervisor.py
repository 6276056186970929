"""Watchers of training runs: end or resume a run whose worker stopped heartbeating.

Two kinds of process watch, through the database only, so a watcher never needs to be the process
that launched the worker, nor on its host:

* every trainer service process runs a :class:`Watcher` thread (started with the app's lifespan):
  it sweeps for stale runs and launches the runs queued for an automatic resume;
* every Celery worker runs :func:`sweep` as a sweeper (``register_sweeper``): it ends or requeues
  stale runs even while no trainer service is up; it never launches (a trainer host does).

A run is stale when it is queued or running, claimed by a launcher, and its heartbeat is older
than ``trainer_stale_after_s``. Each action is a compare-and-set in ``runs.end_dead_attempt`` /
``runs.claim_pending``, so any number of watchers race safely: one acts, the others see no row.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import select

from services.common.db import session_scope, utcnow
from services.common.settings import get_settings
from services.common.tasks import register_sweeper
from services.trainer import runs
from services.trainer.models import LIVE_STATUSES, RunStatus, TrainingRun

logger = logging.getLogger(__name__)
SWEEP_LIMIT = 500


def watch_interval_s() -> float:
    s = get_settings()
    return s.trainer_watch_interval_s if s.trainer_watch_interval_s is not None else s.trainer_heartbeat_s


def _stale_cause(status: RunStatus, heartbeat_at: datetime | None, now: datetime, pid: int | None,
                 host: str | None) -> str:
    age = (now - heartbeat_at).total_seconds() if heartbeat_at is not None else float("nan")
    bound = runs.stale_after_s()
    if status is RunStatus.queued:
        return (f"the run's worker never started: no heartbeat {age:.0f} s after its launch (bound {bound:.0f} s; "
                "the launching service died or the worker could not start)")
    return (f"the run's worker stopped heartbeating: last heartbeat {age:.0f} s ago (bound {bound:.0f} s; "
            f"worker pid {pid} on {host}); it was killed or lost its machine")


def sweep(now: datetime | None = None) -> dict[str, int]:
    """End or requeue every run whose heartbeat is stale; counts of what this call did."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=runs.stale_after_s())
    with session_scope() as session:
        rows = session.execute(
            select(TrainingRun.id, TrainingRun.attempt, TrainingRun.status, TrainingRun.heartbeat_at,
                   TrainingRun.worker_pid, TrainingRun.worker_host)
            .where(TrainingRun.status.in_(LIVE_STATUSES), TrainingRun.supervisor.is_not(None),
                   TrainingRun.heartbeat_at < stale_before)
            .order_by(TrainingRun.heartbeat_at).limit(SWEEP_LIMIT)).all()
    counts = {"failed": 0, "cancelled": 0, "resumed": 0}
    for run_id, attempt, status, heartbeat_at, pid, host in rows:
        cause = _stale_cause(status, heartbeat_at, now, pid, host)
        outcome = runs.end_dead_attempt(run_id, attempt, cause, stale_before=stale_before)
        if outcome is not None:
            counts[outcome] += 1
    return counts


def launch_pending() -> int:
    """Launch the runs queued for an automatic resume that no process has claimed; how many this one got."""
    with session_scope() as session:
        waiting = list(session.scalars(select(TrainingRun.id).where(TrainingRun.status == RunStatus.queued,
                                                                    TrainingRun.supervisor.is_(None))
                                       .order_by(TrainingRun.created_at).limit(SWEEP_LIMIT)))
    return sum(runs.relaunch(run_id) for run_id in waiting)


def watch_once() -> dict[str, int]:
    """One round of a trainer service's watcher."""
    counts = sweep()
    counts["launched"] = launch_pending()
    return counts


class Watcher:
    """The watcher thread of one trainer service process: a round at once, then every interval."""

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_s if interval_s is not None else watch_interval_s()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rewardhub-run-watcher")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                counts = watch_once()
                if any(counts.values()):
                    logger.info("run watcher: %s", counts)
            except Exception as exc:  # the database is down: the next round retries
                logger.warning("run watcher round failed: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.interval_s)


register_sweeper("trainer.runs", sweep)

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
from services.trainer import evaljobs as _evaljobs  # noqa: F401  (registers the evaluation job kind)
from services.trainer import runs
from services.trainer.models import LIVE_STATUSES, RunStatus

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


def sweep(now: datetime | None = None, *, kind: runs.JobKind | None = None) -> dict[str, int]:
    """End or requeue every run (or job of ``kind``) whose heartbeat is stale; counts of what this call did."""
    kind = kind or runs.RUN_JOBS
    table = kind.table
    now = now or utcnow()
    stale_before = now - timedelta(seconds=runs.stale_after_s())
    with session_scope() as session:
        rows = session.execute(
            select(table.id, table.attempt, table.status, table.heartbeat_at, table.worker_pid, table.worker_host)
            .where(table.status.in_(LIVE_STATUSES), table.supervisor.is_not(None), table.heartbeat_at < stale_before)
            .order_by(table.heartbeat_at).limit(SWEEP_LIMIT)).all()
    counts = {"failed": 0, "cancelled": 0, "resumed": 0}
    for run_id, attempt, status, heartbeat_at, pid, host in rows:
        cause = _stale_cause(status, heartbeat_at, now, pid, host).replace("the run's", f"the {kind.noun}'s")
        outcome = runs.end_dead_attempt(run_id, attempt, cause, stale_before=stale_before, kind=kind)
        if outcome is not None:
            counts[outcome] += 1
    return counts


def launch_pending(*, kind: runs.JobKind | None = None) -> int:
    """Launch the runs (or jobs of ``kind``) queued for an automatic resume that no process has claimed;
    how many this one got."""
    table = (kind or runs.RUN_JOBS).table
    with session_scope() as session:
        waiting = list(session.scalars(select(table.id).where(table.status == RunStatus.queued,
                                                              table.supervisor.is_(None))
                                       .order_by(table.created_at).limit(SWEEP_LIMIT)))
    return sum(runs.relaunch(run_id, kind=kind) for run_id in waiting)


def watch_once() -> dict[str, int]:
    """One round of a trainer service's watcher, over every kind of supervised job (runs first)."""
    counts = sweep()
    counts["launched"] = launch_pending()
    for kind in runs.job_kinds():
        if kind is runs.RUN_JOBS:
            continue
        for name, value in sweep(kind=kind).items():
            counts[name] += value
        counts["launched"] += launch_pending(kind=kind)
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

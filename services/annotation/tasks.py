"""The webhook sender as a Celery task, its sweeper, and retry scheduling.

With ``REDIS_URL`` a worker runs :func:`deliver_webhooks`; without it (embedded default) the same
task runs on a local thread through ``services.common.tasks.submit``. Three things start it:

* a kick after each commit that wrote delivery rows (:func:`kick`, with those rows' ids);
* a retry timer for the earliest pending retry (:func:`schedule_drain`: a Celery countdown, or a
  local timer in the embedded default);
* the sweeper every worker runs at start-up and every ``job_sweep_interval_s``
  (:func:`sweep_webhooks`), which picks up rows whose kick or timer was lost (a restart, a broker
  outage) and rows stranded by a sender that died mid-send.

Any of them may fire twice or race another: rows are claimed under a lease
(``services/annotation/webhooks.py``), so a duplicate start sends nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from datetime import datetime
from typing import Any

from celery import Task

from services.annotation import webhooks
from services.common.db import utcnow
from services.common.tasks import celery_app, register_sweeper, submit

log = logging.getLogger("rewardhub.annotation.tasks")

_LOCAL_SENDS: set[Future[Any]] = set()
_LOCAL_LOCK = threading.Lock()
_TIMER: threading.Timer | None = None
_TIMER_DUE: float = 0.0  # time.monotonic() at which _TIMER fires
_CAUGHT_UP = False  # embedded default: this process has sent what an earlier run left (see kick)


@celery_app.task(name="annotation.deliver_webhooks", bind=True)  # type: ignore[untyped-decorator]
def deliver_webhooks(self: Task, delivery_ids: list[str] | None = None) -> dict[str, Any]:
    """Send the due deliveries (only those of ``delivery_ids`` when given), then schedule the next retry."""
    report = webhooks.deliver_due(ids=delivery_ids)
    # Only a drain that just scheduled retries sets a timer (not every drain that sees old pending
    # rows), so a receiver outage does not pile up one timer per label; the sweeper covers the rest.
    if report.retrying and report.next_due_at is not None:
        schedule_drain(report.next_due_at)
    return report.as_dict()


def kick(delivery_ids: list[str] | None = None) -> None:
    """Start a sender now. Raises ``BrokerUnavailable`` when Redis is down (the sweeper sends later).

    In the embedded default no worker sweeps, so the first kick of a process sends every due row,
    not only ``delivery_ids``: what a previous run left unsent goes out with the first new label.
    """
    global _CAUGHT_UP
    if celery_app.conf.task_always_eager and not _CAUGHT_UP:
        _CAUGHT_UP, delivery_ids = True, None
    handle = submit(deliver_webhooks, delivery_ids)
    if handle.future is not None:
        with _LOCAL_LOCK:
            _LOCAL_SENDS.add(handle.future)
        handle.future.add_done_callback(_forget)


def _forget(future: Future[Any]) -> None:
    with _LOCAL_LOCK:
        _LOCAL_SENDS.discard(future)


def wait_for_local_sends(timeout_s: float = 30.0) -> None:
    """Block until the in-process sends started so far have finished (embedded default, tests)."""
    with _LOCAL_LOCK:
        pending = list(_LOCAL_SENDS)
    wait_futures(pending, timeout=timeout_s)


def schedule_drain(due_at: datetime) -> None:
    """Run a sender when the earliest pending retry falls due (best effort: the sweeper is the net)."""
    delay = max(0.0, (due_at - utcnow()).total_seconds())
    if not celery_app.conf.task_always_eager:
        try:
            deliver_webhooks.apply_async(countdown=delay)
        except Exception as exc:  # the broker is down: the sweeper finds the row when it is due
            log.warning("could not schedule the webhook retry in %.0f s (%s); the sweeper will", delay, exc)
        return
    _schedule_local(delay)


def _schedule_local(delay_s: float) -> None:
    """One timer per process, kept at the earliest retry asked for."""
    global _TIMER, _TIMER_DUE
    due = time.monotonic() + delay_s
    with _LOCAL_LOCK:
        if _TIMER is not None and _TIMER.is_alive() and due >= _TIMER_DUE:
            return
        if _TIMER is not None:
            _TIMER.cancel()
        _TIMER = threading.Timer(delay_s, _kick_quietly)
        _TIMER.daemon = True
        _TIMER_DUE = due
        _TIMER.start()


def cancel_scheduled() -> None:
    """Drop the local retry timer (tests, shutdown); the rows stay due for the next sender."""
    global _TIMER
    with _LOCAL_LOCK:
        if _TIMER is not None:
            _TIMER.cancel()
            _TIMER = None


def _kick_quietly() -> None:
    try:
        kick()
    except Exception as exc:
        log.warning("webhook retry could not start (%s: %s); the next sweep retries", type(exc).__name__, exc)


def sweep_webhooks() -> dict[str, int]:
    """One sweeper round: start a sender if any delivery is due (new, a retry, or a stranded lease)."""
    due = webhooks.count_due()
    if due:
        kick()
    return {"due": due}


register_sweeper("annotation.webhooks", sweep_webhooks)

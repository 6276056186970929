"""Durable webhook deliveries: a transactional outbox, leased senders, retries with backoff.

* **Outbox.** A label change adds its label to a ``webhook_deliveries`` row in the label's own
  transaction (:func:`add_label`; one row per project per transaction, like the old single POST):
  a rolled-back label leaves no row, a committed one is not lost to a restart.
* **Sending.** :func:`deliver_due` claims due rows and POSTs each once. Claiming is one
  compare-and-set UPDATE (``FOR UPDATE SKIP LOCKED`` on Postgres) that sets ``state=delivering``, a
  lease (``lease_owner``, ``lease_until``) and counts the attempt, so two senders never send one row
  at once; the outcome is recorded only by the lease holder. A sender that dies mid-send leaves its
  row to the next sender once the lease runs out (the receiver may then see that attempt twice,
  with the same ``X-Rewardhub-Delivery``: deliveries are at least once, receivers deduplicate).
* **Retries.** Transport errors, a failed DNS lookup, 5xx and 429 are retried after
  :func:`backoff_s`; after ``webhook_max_attempts`` the row is ``failed`` and kept. A refused URL
  (SSRF guard), another 4xx or a redirect fails the row at once. An admin can redeliver a failed
  row (:func:`redeliver`): same id, attempts counted afresh.
* **Target by reference.** Every attempt reads the project's current URL and secret; neither is
  copied into the row, and error texts are scrubbed of URL credentials and query strings.

Who calls :func:`deliver_due`: ``services/annotation/tasks.py`` (a Celery task kicked after each
commit, a sweeper on every worker, and in the embedded default the same task on a local thread).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, event, func, or_, select, update
from sqlalchemy import inspect as inspect_state
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from services.annotation import notifications
from services.annotation.models import AnnotationProject, DeliveryState, WebhookDelivery
from services.common.db import session_scope, utcnow
from services.common.errors import Conflict, NotFound
from services.common.pagination import keyset_page
from services.common.settings import Settings, get_settings

log = logging.getLogger("rewardhub.annotation.webhooks")

LABELS_EVENT = "labels"
MAX_ERROR_CHARS = 500
_ROWS_KEY = "annotation_webhook_rows"  # this transaction's row per project
_KICKS_KEY = "annotation_webhook_kicks"  # rows to send once the transaction commits
_URL_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


# ------------------------------------------------------------------------------------ backoff


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt (1 = the first): exponential, with jitter.

    ``ceiling = min(max_s, base_s × 2^(attempt−1))`` and the delay is ``ceiling/2 + uniform(0, ceiling/2)``
    ("equal jitter"): it lies in [ceiling/2, ceiling], so it still doubles per attempt, while senders
    that failed at the same moment (a receiver outage) spread out instead of retrying in lockstep.
    """
    ceiling = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def lease_s(settings: Settings) -> float:
    """How long a claim holds: the setting, but never less than two POST time limits."""
    return max(settings.webhook_lease_s, 2 * settings.webhook_timeout_s)


# ------------------------------------------------------------------------------------- outbox


def add_label(session: Session, annotation_project_id: str, label: dict[str, Any]) -> WebhookDelivery:
    """Add ``label`` to this transaction's delivery row of the project (created on first use)."""
    rows: dict[str, WebhookDelivery] = session.info.setdefault(_ROWS_KEY, {})
    row = rows.get(annotation_project_id)
    if row is None or not _still_in_transaction(row):
        row = WebhookDelivery(annotation_project_id=annotation_project_id, event_id=uuid.uuid4().hex,
                              event_type=LABELS_EVENT, payload={}, state=DeliveryState.pending, attempts=0,
                              next_attempt_at=utcnow())
        session.add(row)
        rows[annotation_project_id] = row
        track_after_commit(session, row)
    labels = [*row.payload.get("labels", []), label]
    # A new dict, not an in-place change: plain JSON columns only see reassignment.
    row.payload = {"event": LABELS_EVENT, "event_id": row.event_id, "annotation_project_id": annotation_project_id,
                   "labels": labels, "label_cursor": max(int(x["seq"]) for x in labels)}
    return row


def _still_in_transaction(row: WebhookDelivery) -> bool:
    state = inspect_state(row)
    return bool(state.pending or state.persistent)


def track_after_commit(session: Session, row: WebhookDelivery) -> None:
    """Kick a sender for ``row`` once the session commits (the sweeper covers a kick that is lost)."""
    kicks: list[WebhookDelivery] | None = session.info.get(_KICKS_KEY)
    if kicks is None:
        kicks = session.info[_KICKS_KEY] = []
        if not event.contains(session, "after_commit", _kick_after_commit):
            event.listen(session, "after_commit", _kick_after_commit)
            event.listen(session, "after_soft_rollback", _forget_after_rollback)
    kicks.append(row)


def _forget_after_rollback(session: Session, previous_transaction: Any) -> None:
    # Rows added inside a rolled-back savepoint (or the whole transaction) are gone; the rest stay.
    for key in (_KICKS_KEY, _ROWS_KEY):
        kept = session.info.get(key)
        if kept is None:
            continue
        if isinstance(kept, dict):
            session.info[key] = {k: r for k, r in kept.items() if _still_in_transaction(r)}
        else:
            session.info[key] = [r for r in kept if _still_in_transaction(r)]
    if previous_transaction.parent is None:
        session.info.pop(_KICKS_KEY, None)
        session.info.pop(_ROWS_KEY, None)


def _kick_after_commit(session: Session) -> None:
    rows: list[WebhookDelivery] = session.info.pop(_KICKS_KEY, None) or []
    session.info.pop(_ROWS_KEY, None)
    if not rows:
        return
    from services.annotation import tasks  # imported here: tasks imports this module

    try:
        tasks.kick([row.id for row in rows])
    except Exception as exc:  # the broker is down: the rows are committed, the sweeper sends them
        log.warning("could not start sending %d webhook deliveries now (%s: %s); the sweeper sends them",
                    len(rows), type(exc).__name__, exc)


# ------------------------------------------------------------------------------------ sending


@dataclass
class DrainReport:
    """What one :func:`deliver_due` call did."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lost: int = 0  # outcomes not recorded: the lease had passed to another sender
    next_due_at: datetime | None = None  # the earliest pending retry left, for scheduling

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed, "lost": self.lost,
                "next_due_at": self.next_due_at.isoformat() if self.next_due_at else None}


@dataclass
class _Outcome:
    state: DeliveryState  # delivered, pending (retry) or failed
    status_code: int | None = None
    error: str | None = None
    retryable: bool = field(default=False)


def new_sender_id() -> str:
    """Who holds a lease: host, process and a random part (two senders in one process differ)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _is_due(now: datetime) -> ColumnElement[bool]:
    return or_(and_(WebhookDelivery.state == DeliveryState.pending, WebhookDelivery.next_attempt_at <= now),
               and_(WebhookDelivery.state == DeliveryState.delivering, WebhookDelivery.lease_until < now))


def _fail_stranded_last_attempts(session: Session, now: datetime, max_attempts: int) -> None:
    """A lease that ran out on the last allowed attempt: its sender died; the row is dead."""
    session.execute(update(WebhookDelivery).where(
        WebhookDelivery.state == DeliveryState.delivering, WebhookDelivery.lease_until < now,
        WebhookDelivery.attempts >= max_attempts,
    ).values(state=DeliveryState.failed, lease_owner=None, lease_until=None,
             last_error="the sender of the last attempt stopped before it finished (its lease ran out)")
        .execution_options(synchronize_session=False))


def claim(owner: str, *, now: datetime, limit: int, ids: list[str] | None = None) -> list[str]:
    """Lease up to ``limit`` due rows (or the due ones of ``ids``) to ``owner``; returns their ids."""
    settings = get_settings()
    with session_scope() as session:
        _fail_stranded_last_attempts(session, now, settings.webhook_max_attempts)
        candidates = (select(WebhookDelivery.id).where(_is_due(now)).order_by(WebhookDelivery.next_attempt_at)
                      .limit(limit).with_for_update(skip_locked=True))
        if ids is not None:
            candidates = candidates.where(WebhookDelivery.id.in_(ids))
        claimed = session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(candidates), _is_due(now))
            .values(state=DeliveryState.delivering, lease_owner=owner,
                    lease_until=now + timedelta(seconds=lease_s(settings)),
                    attempts=WebhookDelivery.attempts + 1, last_attempt_at=now)
            .returning(WebhookDelivery.id).execution_options(synchronize_session=False)).scalars().all()
    return list(claimed)


def attempt(delivery_id: str, owner: str, client: httpx.Client) -> tuple[_Outcome, int] | None:
    """POST a row this sender holds; returns the outcome and the attempt number, or None if not held."""
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None or row.state is not DeliveryState.delivering or row.lease_owner != owner:
            return None
        project = session.get(AnnotationProject, row.annotation_project_id)
        url = project.webhook_url if project is not None else None
        secret = project.webhook_secret if project is not None else ""
        payload, event_type, number = row.payload, row.event_type, row.attempts
    if not url:
        return _Outcome(DeliveryState.failed, error="the project has no webhook_url any more"), number
    try:
        status = notifications.post_webhook(url, secret, notifications.encode_payload(payload),
                                            delivery_id=delivery_id, event_type=event_type, attempt=number,
                                            client=client)
        return _Outcome(DeliveryState.delivered, status_code=status), number
    except notifications.WebhookRejected as exc:
        return _Outcome(DeliveryState.failed, exc.status_code, describe_error(exc, secret)), number
    except notifications.WebhookUnavailable as exc:
        return _Outcome(DeliveryState.pending, exc.status_code, describe_error(exc, secret), retryable=True), number
    except httpx.HTTPError as exc:  # connect/read/timeouts, a failed lookup, a broken response
        return _Outcome(DeliveryState.pending, None, describe_error(exc, secret), retryable=True), number


def record(delivery_id: str, owner: str, outcome: _Outcome, number: int, *, now: datetime) -> bool:
    """Store an attempt's outcome if ``owner`` still holds the row; False if the lease had passed on."""
    settings = get_settings()
    values: dict[str, Any] = {"lease_owner": None, "lease_until": None, "last_status_code": outcome.status_code,
                              "last_error": outcome.error}
    if outcome.state is DeliveryState.delivered:
        values.update(state=DeliveryState.delivered, delivered_at=now)
    elif outcome.retryable and number < settings.webhook_max_attempts:
        delay = backoff_s(number, settings.webhook_backoff_base_s, settings.webhook_backoff_max_s)
        values.update(state=DeliveryState.pending, next_attempt_at=now + timedelta(seconds=delay))
    else:
        values.update(state=DeliveryState.failed)
    with session_scope() as session:
        done = session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.lease_owner == owner,
            WebhookDelivery.state == DeliveryState.delivering).values(**values)
            .execution_options(synchronize_session=False))
        return bool(done.rowcount)  # type: ignore[attr-defined]


def deliver_due(*, ids: list[str] | None = None, now: datetime | None = None, limit: int = 50,
                owner: str | None = None, max_rounds: int = 20) -> DrainReport:
    """Send the due rows (or the due ones of ``ids``), one attempt each; ``now`` fixes the clock (tests)."""
    settings = get_settings()
    owner = owner or new_sender_id()
    report = DrainReport()
    with httpx.Client(timeout=settings.webhook_timeout_s) as client:
        for _ in range(max_rounds):
            claimed = claim(owner, now=now or utcnow(), limit=limit, ids=ids)
            for delivery_id in claimed:
                _send_one(delivery_id, owner, client, report, now)
            if ids is not None or len(claimed) < limit:
                break
    report.next_due_at = next_retry_at()
    return report


def _send_one(delivery_id: str, owner: str, client: httpx.Client, report: DrainReport, now: datetime | None) -> None:
    result = attempt(delivery_id, owner, client)
    if result is None:
        report.lost += 1
        return
    outcome, number = result
    if not record(delivery_id, owner, outcome, number, now=now or utcnow()):
        report.lost += 1
        log.warning("webhook delivery %s: the lease passed to another sender before attempt %d was recorded",
                    delivery_id, number)
        return
    if outcome.state is DeliveryState.delivered:
        report.delivered += 1
    elif outcome.retryable and number < get_settings().webhook_max_attempts:
        report.retrying += 1
    else:
        report.failed += 1
        log.warning("webhook delivery %s failed for good after %d attempt(s): %s", delivery_id, number, outcome.error)


def next_retry_at() -> datetime | None:
    """When the earliest pending row falls due (None: nothing pending)."""
    with session_scope() as session:
        return session.scalar(select(func.min(WebhookDelivery.next_attempt_at))
                              .where(WebhookDelivery.state == DeliveryState.pending))


def count_due(now: datetime | None = None) -> int:
    """Rows a sender could claim now (due retries, new rows, stranded leases)."""
    with session_scope() as session:
        return int(session.scalar(select(func.count(WebhookDelivery.id)).where(_is_due(now or utcnow()))) or 0)


# ------------------------------------------------------------------------------ redaction


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: no user name, password, query or fragment (they may hold secrets)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<url>"
    port = f":{parsed.port}" if parsed.port is not None else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def describe_error(exc: BaseException, secret: str = "") -> str:
    """An attempt's error for the row and the API: the exception, URLs redacted, the secret removed."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = _URL_PATTERN.sub(lambda m: redact_url(m.group(0)), text)
    if secret:
        text = text.replace(secret, "<secret>")
    return text[:MAX_ERROR_CHARS]


# ------------------------------------------------------------------------------ admin views


def list_deliveries(session: Session, annotation_project_id: str, *, state: DeliveryState | None,
                    cursor: str | None, limit: int) -> tuple[list[WebhookDelivery], str | None]:
    """One page of a project's deliveries (of that state, when given), newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.annotation_project_id == annotation_project_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    return keyset_page(session, query, (WebhookDelivery.created_at, WebhookDelivery.id), cursor, limit,
                       descending=True)


def redeliver(session: Session, annotation_project_id: str, delivery_id: str,
              now: datetime | None = None) -> WebhookDelivery:
    """Queue a failed delivery again (same id, a fresh count of attempts); sent after the commit."""
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None or row.annotation_project_id != annotation_project_id:
        raise NotFound(f"webhook delivery {delivery_id!r} not found", field="delivery_id")
    if row.state is not DeliveryState.failed:
        raise Conflict(f"webhook delivery {delivery_id!r} is {row.state.value}; only a failed one can be redelivered",
                       field="delivery_id", code="delivery_not_failed")
    row.state, row.attempts, row.next_attempt_at = DeliveryState.pending, 0, now or utcnow()
    row.lease_owner = row.lease_until = None
    track_after_commit(session, row)
    return row

"""Idempotency keys for every service: one table, one helper, leases instead of forever-pending claims.

A client sends ``Idempotency-Key: <key>`` on a write it may retry. The first request with a key
does the work and stores its answer; a retry with the same key and the same body gets the stored
answer back (``Idempotent-Replayed: true``); the same key with a different body is refused
(409 ``idempotency_key_reused``). Keys are scoped to a tenancy project and an endpoint name.

Two ways to hold a key, both on the ``idempotency_records`` table:

* **Lease** (``claim`` / ``complete`` / ``release``) — for work that spans several transactions or
  another service (the gateway's fan-out to the verifier). ``claim`` commits a ``pending`` row with
  ``lease_expires_at``; while the lease runs, a concurrent duplicate gets 409
  ``idempotency_in_progress`` (with ``Retry-After``), so the work runs once. ``complete`` stores the
  answer (in the caller's transaction, next to the rows it writes) before it is returned or
  streamed. An attempt that dies without completing (``kill -9``, a lost database connection, a
  client that went away before the answer was stored) leaves a pending row whose lease expires; the
  next retry takes it over and runs the work again. No key is ever stuck.
* **Transaction** (``replay`` / ``remember``) — for work done inside one database transaction
  (annotation's steps, purchases, undo). The record is inserted in that transaction, so it commits
  with the work or not at all: a crash rolls both back and the retry runs afresh, and a concurrent
  duplicate waits on the row and then replays the committed answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Response
from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.common.db import Base, session_scope, utcnow
from services.common.errors import Conflict
from services.common.models import new_id
from services.common.settings import get_settings

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
PENDING, DONE = "pending", "done"


class IdempotencyRecord(Base):
    """The claim on, and then the stored answer to, a request sent with an idempotency key."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("project_id", "endpoint", "key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    # pending while an attempt holds the lease; done once its answer is stored.
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    status_code: Mapped[int | None] = mapped_column(default=None)
    response: Mapped[str | None] = mapped_column(Text, default=None)
    # Which attempt holds a pending claim, and until when; an expired lease may be taken over.
    owner: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


def fingerprint(body: dict[str, Any]) -> str:
    """A stable hash of a request body (key order and whitespace do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def lease_seconds(request_budget_s: float | None = None) -> float:
    """``REWARDHUB_IDEMPOTENCY_LEASE_S``, or three times the request's own time budget."""
    configured = get_settings().idempotency_lease_s
    if configured is not None:
        return float(configured)
    budget = request_budget_s if request_budget_s is not None else get_settings().http_timeout_s
    return max(3.0 * budget, 10.0)


@dataclass(frozen=True)
class Stored:
    """The answer of an earlier request with this key."""

    status_code: int
    body: str


@dataclass(frozen=True)
class Claim:
    """This attempt holds the key until ``lease_expires_at`` (or until it completes or releases)."""

    record_id: str
    project_id: str
    endpoint: str
    key: str
    request_hash: str
    owner: str
    lease_expires_at: datetime
    took_over: bool


class InProgress(Conflict):
    """Another attempt holds a live lease on this key; retry after ``retry_after_s``."""

    code = "idempotency_in_progress"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("a request with this idempotency key is still in progress; retry later",
                         field="idempotency_key")
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class AlreadyCompleted(Exception):
    """Another attempt (one that took over an expired lease, or the one it took over) stored its answer
    first. Raised from ``complete`` so the caller's transaction rolls back its duplicate writes; the
    caller returns ``stored`` instead."""

    def __init__(self, stored: Stored) -> None:
        super().__init__("the idempotency key was completed by another attempt")
        self.stored = stored


def reused() -> Conflict:
    return Conflict("this idempotency key was already used for a different request", field="idempotency_key",
                    code="idempotency_key_reused")


def _lookup(session: Session, project_id: str, endpoint: str, key: str) -> IdempotencyRecord | None:
    return session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.project_id == project_id, IdempotencyRecord.endpoint == endpoint,
        IdempotencyRecord.key == key))


def _stored(record: IdempotencyRecord) -> Stored:
    return Stored(status_code=record.status_code or 200, body=record.response or "")


# ----------------------------------------------------------------------------------------- leases


def claim(project_id: str, endpoint: str, key: str, request_hash: str, *, lease_s: float,
          now: datetime | None = None) -> Claim | Stored:
    """Claim ``key`` for this attempt, or return the stored answer of an earlier identical request.

    Raises 409 ``idempotency_key_reused`` for a different body and ``InProgress`` while another
    attempt's lease is live. Commits on its own, before any work starts.
    """
    owner = uuid.uuid4().hex
    for _ in range(5):
        current = now or utcnow()
        expires = current + timedelta(seconds=lease_s)
        with session_scope() as session:
            record = _lookup(session, project_id, endpoint, key)
            if record is not None:
                if record.request_hash != request_hash:
                    raise reused()
                if record.state == DONE:
                    return _stored(record)
                if record.lease_expires_at is not None and record.lease_expires_at > current:
                    raise InProgress((record.lease_expires_at - current).total_seconds())
                # The holder died or was cut off before storing an answer: take the claim over, unless
                # a concurrent retry does so first (compare-and-set on the previous owner and lease).
                taken = session.execute(
                    update(IdempotencyRecord)
                    .where(IdempotencyRecord.id == record.id, IdempotencyRecord.state == PENDING,
                           IdempotencyRecord.owner.is_(None) if record.owner is None
                           else IdempotencyRecord.owner == record.owner,
                           or_(IdempotencyRecord.lease_expires_at.is_(None),
                               IdempotencyRecord.lease_expires_at <= current))
                    .values(owner=owner, lease_expires_at=expires, attempts=IdempotencyRecord.attempts + 1)
                    .execution_options(synchronize_session=False))
                if getattr(taken, "rowcount", 0) == 1:
                    return Claim(record.id, project_id, endpoint, key, request_hash, owner, expires, took_over=True)
                continue
        try:
            with session_scope() as session:
                record = IdempotencyRecord(project_id=project_id, endpoint=endpoint, key=key,
                                           request_hash=request_hash, state=PENDING, owner=owner,
                                           lease_expires_at=expires, created_at=current)
                session.add(record)
                session.flush()
                record_id = record.id
            return Claim(record_id, project_id, endpoint, key, request_hash, owner, expires, took_over=False)
        except IntegrityError:
            continue  # a concurrent duplicate inserted first: read its record
    raise InProgress(1.0)


def complete(held: Claim, status_code: int, body: str, *, session: Session | None = None) -> None:
    """Store the answer. Pass the session that writes the request's own rows so both commit together.

    Raises ``AlreadyCompleted`` when another attempt stored an answer first (then the caller's
    writes must roll back and ``stored`` is the answer to give).
    """
    if session is None:
        with session_scope() as own:
            complete(held, status_code, body, session=own)
        return
    # Any pending holder may complete: if our lease was taken over, whichever attempt finishes first
    # stores the one answer and the other replays it.
    done = session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == held.record_id, IdempotencyRecord.state == PENDING)
        .values(state=DONE, status_code=status_code, response=body, owner=None, lease_expires_at=None,
                completed_at=utcnow())
        .execution_options(synchronize_session=False))
    if getattr(done, "rowcount", 0) == 1:
        return
    record = session.get(IdempotencyRecord, held.record_id)
    if record is not None and record.state == DONE:
        raise AlreadyCompleted(_stored(record))
    # The claim row is gone (its project was deleted, or a stale release): store the answer afresh.
    session.add(IdempotencyRecord(id=held.record_id, project_id=held.project_id, endpoint=held.endpoint,
                                  key=held.key, request_hash=held.request_hash, state=DONE, status_code=status_code,
                                  response=body, completed_at=utcnow()))


def release(held: Claim) -> None:
    """Give up a claim whose attempt failed before producing an answer, so a retry runs at once."""
    with session_scope() as session:
        session.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.id == held.record_id, IdempotencyRecord.state == PENDING,
            IdempotencyRecord.owner == held.owner).execution_options(synchronize_session=False))


def renew(held: Claim, lease_s: float) -> bool:
    """Extend a live claim (a heartbeat for long work); False when it was taken over or completed."""
    with session_scope() as session:
        result = session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == held.record_id, IdempotencyRecord.state == PENDING,
                   IdempotencyRecord.owner == held.owner)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False))
        return getattr(result, "rowcount", 0) == 1


# ------------------------------------------------------------------------------------ transaction


def replay(session: Session, project_id: str, endpoint: str, key: str, request_hash: str) -> Stored | None:
    """In the caller's transaction: the stored answer for ``key``, or None after claiming it.

    The claim is a row inserted in this transaction: it commits with the work (``remember`` fills in
    the answer) or rolls back with it. A concurrent duplicate blocks on the row until this
    transaction ends, then replays the committed answer (or claims the key if this one rolled back).
    """
    for _ in range(3):
        record = _lookup(session, project_id, endpoint, key)
        if record is not None:
            if record.request_hash != request_hash:
                raise reused()
            if record.state == DONE:
                return _stored(record)
            if record.owner == _TX_OWNER:
                # Claimed by this very transaction, or committed by one that stored no answer (it
                # caught its own error): either way this attempt runs the work and remembers it.
                return None
            if record.lease_expires_at is not None and record.lease_expires_at > utcnow():
                raise InProgress((record.lease_expires_at - utcnow()).total_seconds())
            record.owner, record.lease_expires_at = _TX_OWNER, None  # an expired lease: take it over
            return None
        try:
            with session.begin_nested():
                session.add(IdempotencyRecord(project_id=project_id, endpoint=endpoint, key=key,
                                              request_hash=request_hash, state=PENDING, owner=_TX_OWNER))
            return None
        except IntegrityError:
            continue  # a concurrent duplicate committed first: read its answer
    raise InProgress(1.0)


def remember(session: Session, project_id: str, endpoint: str, key: str, request_hash: str, status_code: int,
             body: str) -> None:
    """In the caller's transaction: store the answer for ``key`` (claimed by ``replay``)."""
    record = _lookup(session, project_id, endpoint, key)
    if record is None:
        session.add(IdempotencyRecord(project_id=project_id, endpoint=endpoint, key=key,
                                      request_hash=request_hash, state=DONE, status_code=status_code,
                                      response=body, completed_at=utcnow()))
        return
    record.state, record.status_code, record.response = DONE, status_code, body
    record.owner, record.lease_expires_at, record.completed_at = None, None, utcnow()


# The owner of a transaction-mode claim: it is never visible to other transactions while pending.
_TX_OWNER = "transaction"


def key_from(header: str | None, body_field: str | None) -> tuple[str | None, bool]:
    """The request's key: the ``Idempotency-Key`` header, else the deprecated body field.

    Returns the key and whether it came from the deprecated body field.
    """
    if header is not None:
        return header, False
    return body_field, body_field is not None


def replayed_response(stored: Stored) -> Response:
    """The stored answer of an earlier request with the same Idempotency-Key, marked as a replay."""
    return Response(stored.body, status_code=stored.status_code, media_type="application/json",
                    headers={REPLAYED_HEADER: "true"})

"""Idempotency keys: a retried write returns the first answer and never runs twice."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.common.db import session_scope
from services.common.errors import Conflict
from services.gateway.models import IdempotencyRecord


def request_fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Replay:
    status_code: int
    body: str


def claim(project_id: str, endpoint: str, key: str, fingerprint: str) -> Replay | None:
    """Claim ``key`` for this request, or return the stored answer of an earlier identical one.

    Raises Conflict when the key is in flight or was used for a different request.
    """
    for _ in range(2):
        with session_scope() as session:
            record = session.scalar(select(IdempotencyRecord).where(
                IdempotencyRecord.project_id == project_id, IdempotencyRecord.endpoint == endpoint,
                IdempotencyRecord.key == key))
            if record is not None:
                if record.request_hash != fingerprint:
                    raise Conflict("this idempotency key was already used for a different request",
                                   field="idempotency_key", code="idempotency_key_reused")
                if record.state == "pending":
                    raise Conflict("a request with this idempotency key is still in progress; retry later",
                                   field="idempotency_key", code="idempotency_in_progress")
                return Replay(status_code=record.status_code or 200, body=record.response or "")
        try:
            with session_scope() as session:
                session.add(IdempotencyRecord(project_id=project_id, endpoint=endpoint, key=key,
                                              request_hash=fingerprint))
            return None
        except IntegrityError:
            continue  # a concurrent duplicate claimed it first: read its record
    raise Conflict("a request with this idempotency key is still in progress; retry later",
                   field="idempotency_key", code="idempotency_in_progress")


def complete(project_id: str, endpoint: str, key: str, status_code: int, body: str) -> None:
    with session_scope() as session:
        record = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project_id, IdempotencyRecord.endpoint == endpoint,
            IdempotencyRecord.key == key))
        if record is not None:
            record.state, record.status_code, record.response = "done", status_code, body


def release(project_id: str, endpoint: str, key: str) -> None:
    """Forget a claim whose request failed before producing an answer, so the client can retry."""
    with session_scope() as session:
        record = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project_id, IdempotencyRecord.endpoint == endpoint,
            IdempotencyRecord.key == key, IdempotencyRecord.state == "pending"))
        if record is not None:
            session.delete(record)

"""Telling trainers that labels arrived: a signed, retried webhook and a Server-Sent-Events stream.

Label changes are collected on the session while its transaction runs and sent only after it
commits (a rolled-back label is never announced). The webhook is best-effort with retries; the
label feed (``GET …/labels?cursor=``) is the durable record a client catches up from. The SSE
stream reads that same feed, woken at once by commits in this process and by a short poll for
commits made by other replicas.

Webhook signature: ``X-Rewardhub-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``
with ``X-Rewardhub-Timestamp`` (Unix seconds); check it with ``verify_signature``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from services.common.settings import get_settings

log = logging.getLogger("rewardhub.annotation.notifications")

_SESSION_KEY = "annotation_label_changes"
SIGNATURE_HEADER = "X-Rewardhub-Signature"
TIMESTAMP_HEADER = "X-Rewardhub-Timestamp"


# ------------------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` + body under the project's webhook secret."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str | int, body: bytes, signature: str, *,
                     tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """A receiver's check: right signature, and a timestamp within ``tolerance_s`` (no replays)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# ------------------------------------------------------------------------------------- webhook


class WebhookRejected(Exception):
    """The receiver answered with a status that retrying will not fix."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code >= 500 or exc.response.status_code == 429)


def send_webhook(url: str, secret: str, payload: dict[str, Any], *, attempts: int | None = None,
                 wait: wait_base | None = None, timeout_s: float | None = None,
                 client: httpx.Client | None = None) -> int:
    """POST the signed payload, retrying transport errors, 5xx and 429; returns the final status."""
    settings = get_settings()
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    attempts = attempts if attempts is not None else settings.http_max_retries + 1
    own_client = client is None
    http = client or httpx.Client(timeout=timeout_s or settings.http_timeout_s)
    try:
        for attempt in Retrying(stop=stop_after_attempt(attempts), reraise=True,
                                wait=wait or wait_exponential(multiplier=0.5, max=30),
                                retry=retry_if_exception(_retryable)):
            with attempt:
                timestamp = int(time.time())
                response = http.post(url, content=body, headers={
                    "Content-Type": "application/json", "User-Agent": "rewardhub-annotation",
                    "X-Rewardhub-Event": str(payload.get("event", "labels")),
                    "X-Rewardhub-Delivery": uuid.uuid4().hex, TIMESTAMP_HEADER: str(timestamp),
                    SIGNATURE_HEADER: sign(secret, timestamp, body)})
                if response.status_code >= 500 or response.status_code == 429:
                    response.raise_for_status()
                if response.status_code >= 400:
                    raise WebhookRejected(f"{url} answered {response.status_code}")
                return response.status_code
    finally:
        if own_client:
            http.close()
    raise AssertionError("unreachable")


_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="annotation-webhook")
_IN_FLIGHT: set[Future[int]] = set()
_IN_FLIGHT_LOCK = threading.Lock()


def _dispatch(url: str, secret: str, payload: dict[str, Any]) -> None:
    def run() -> int:
        try:
            return send_webhook(url, secret, payload)
        except Exception as exc:
            log.warning("webhook to %s failed after retries: %s", url, exc)
            raise

    future = _EXECUTOR.submit(run)
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.add(future)
    future.add_done_callback(_forget)


def _forget(future: Future[int]) -> None:
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.discard(future)


def wait_for_webhooks(timeout_s: float = 30.0) -> None:
    """Block until the webhooks sent so far have finished (tests, graceful shutdown)."""
    with _IN_FLIGHT_LOCK:
        pending = list(_IN_FLIGHT)
    wait_futures(pending, timeout=timeout_s)


# --------------------------------------------------------------------------------- broadcaster


class LabelBroadcaster:
    """Wakes SSE streams of a project when a label commits in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def subscribe(self, annotation_project_id: str) -> asyncio.Event:
        wake = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(annotation_project_id, set()).add((asyncio.get_running_loop(), wake))
        return wake

    def unsubscribe(self, annotation_project_id: str, wake: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(annotation_project_id, set())
            for item in [w for w in waiters if w[1] is wake]:
                waiters.discard(item)
            if not waiters:
                self._waiters.pop(annotation_project_id, None)

    def notify(self, annotation_project_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(annotation_project_id, ()))
        for loop, wake in waiters:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # that stream's loop has closed
                self.unsubscribe(annotation_project_id, wake)


broadcaster = LabelBroadcaster()


# -------------------------------------------------------------------- after-commit collection


@dataclass
class _ProjectChanges:
    webhook_url: str | None
    webhook_secret: str
    labels: list[dict[str, Any]] = field(default_factory=list)


def label_changed(session: Session, annotation_project_id: str, label: dict[str, Any] | None, *,
                  webhook_url: str | None, webhook_secret: str) -> None:
    """Remember a label change; it is announced when (and only if) the session commits."""
    changes: dict[str, _ProjectChanges] | None = session.info.get(_SESSION_KEY)
    if changes is None:
        changes = session.info[_SESSION_KEY] = {}
        if not event.contains(session, "after_commit", _after_commit):
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_soft_rollback", _after_rollback)
    entry = changes.setdefault(annotation_project_id, _ProjectChanges(webhook_url, webhook_secret))
    if label is not None:
        entry.labels.append(label)


def _after_rollback(session: Session, _previous_transaction: object) -> None:
    session.info.pop(_SESSION_KEY, None)


def _after_commit(session: Session) -> None:
    changes: dict[str, _ProjectChanges] = session.info.pop(_SESSION_KEY, None) or {}
    for annotation_project_id, entry in changes.items():
        broadcaster.notify(annotation_project_id)
        if entry.webhook_url and entry.labels:
            payload = {"event": "labels", "annotation_project_id": annotation_project_id, "labels": entry.labels,
                       "label_cursor": max(int(label["seq"]) for label in entry.labels)}
            _dispatch(entry.webhook_url, entry.webhook_secret, payload)


# ------------------------------------------------------------------------------------------ SSE


def sse_event(event_name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event_name}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


async def label_stream(annotation_project_id: str, cursor: int,
                       fetch: Callable[[int], list[dict[str, Any]]], *, limit: int | None = None,
                       poll_s: float = 2.0, heartbeat_s: float = 15.0) -> AsyncIterator[bytes]:
    """SSE: each label change after ``cursor`` as an ``event: label`` with ``id: <seq>``.

    ``fetch(cursor)`` returns feed entries after the cursor (run in a thread). Ends after
    ``limit`` events when given; otherwise runs until the client goes away.
    """
    wake = broadcaster.subscribe(annotation_project_id)
    sent = 0
    idle = 0.0
    try:
        yield b"retry: 2000\n\n"
        while True:
            wake.clear()  # before reading, so a commit during the read is not missed
            batch = await asyncio.to_thread(fetch, cursor)
            for label in batch:
                cursor = int(label["seq"])
                yield sse_event("label", label, cursor)
                sent += 1
                if limit is not None and sent >= limit:
                    return
            if batch:
                idle = 0.0
                continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=poll_s)
            except TimeoutError:
                idle += poll_s
                if idle >= heartbeat_s:
                    idle = 0.0
                    yield b": keep-alive\n\n"
    finally:
        broadcaster.unsubscribe(annotation_project_id, wake)

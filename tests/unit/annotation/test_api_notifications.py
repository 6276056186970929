"""Label notifications: HMAC-signed webhook attempts over real HTTP, the outbox row, and the SSE wake-up.

Retries, backoff, leases and restarts of the durable deliveries: tests/unit/test_webhook_delivery.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.annotation import labels, notifications
from services.annotation.app import create_app
from services.annotation.models import DeliveryState, Purchase, WebhookDelivery
from services.common.db import session_scope
from services.common.settings import reset_settings_cache
from tests.conftest import Tenant, bearer
from tests.unit.annotation.test_api import BASE, seed_step


class RecordingWebhookReceiver:
    """Test double: a real HTTP server on loopback that records POSTs and answers scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingWebhookReceiver]:
    """A receiver on loopback, which the SSRF guard lets through only because the operator allows it."""
    monkeypatch.setenv("REWARDHUB_WEBHOOK_ALLOW_PRIVATE", "true")
    reset_settings_cache()
    server = RecordingWebhookReceiver()
    yield server
    server.close()


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"event":"labels"}'
    expected = hmac.new(b"whsec_test", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert notifications.sign("whsec_test", 1700000000, body) == f"sha256={expected}"
    signature = notifications.sign("whsec_test", 1700000000, body)
    assert notifications.verify_signature("whsec_test", "1700000000", body, signature, now=1700000100)
    assert not notifications.verify_signature("whsec_test", "1700000000", body + b" ", signature, now=1700000100)
    assert not notifications.verify_signature("other", "1700000000", body, signature, now=1700000100)
    assert not notifications.verify_signature("whsec_test", "1700000000", body, signature, now=1700009999)


def post_once(url: str, secret: str = "s3cret", delivery_id: str = "d" * 32) -> int:
    with httpx.Client(timeout=5) as client:
        return notifications.post_webhook(url, secret, b'{"event":"labels","labels":[]}', delivery_id=delivery_id,
                                          event_type="labels", attempt=2, client=client)


def test_one_attempt_is_signed_and_names_its_delivery(receiver: RecordingWebhookReceiver) -> None:
    receiver.statuses = [204]
    assert post_once(receiver.url) == 204
    [(headers, body)] = receiver.requests
    assert notifications.verify_signature("s3cret", headers["x-rewardhub-timestamp"], body,
                                          headers["x-rewardhub-signature"])
    assert headers["x-rewardhub-delivery"] == "d" * 32 and headers["x-rewardhub-delivery-attempt"] == "2"
    assert headers["x-rewardhub-event"] == "labels"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_429_are_retryable(receiver: RecordingWebhookReceiver, status: int) -> None:
    receiver.statuses = [status]
    with pytest.raises(notifications.WebhookUnavailable) as raised:
        post_once(receiver.url)
    assert raised.value.status_code == status and len(receiver.requests) == 1


def test_a_client_error_is_final_and_does_not_name_the_url(receiver: RecordingWebhookReceiver) -> None:
    receiver.statuses = [410]
    with pytest.raises(notifications.WebhookRejected) as raised:
        post_once(receiver.url)
    assert raised.value.status_code == 410 and "127.0.0.1" not in str(raised.value)
    assert len(receiver.requests) == 1


def test_a_delivered_label_posts_one_signed_webhook_after_commit(sqlite_tenant: Tenant,
                                                                 receiver: RecordingWebhookReceiver) -> None:
    client = TestClient(create_app())
    admin, trainer, annotator = (bearer(sqlite_tenant.keys[k]) for k in ("admin", "trainer", "annotator"))
    made = client.post(BASE, json={"project_id": sqlite_tenant.project_a, "name": "hooked", "label_budget": 3,
                                   "rollouts_per_prompt": 4, "policy": "random", "webhook_url": receiver.url},
                       headers=admin).json()
    pid = made["id"]
    seed_step(pid, {"a": ["1", "1", "2", None], "b": ["5", "5", "5", "6"]})
    assert client.post(f"{BASE}/{pid}/purchases", json={"step": 0, "prompt_ids": ["a", "b"]},
                       headers=trainer).status_code == 201

    # A transaction that delivers a label and then rolls back announces nothing.
    with pytest.raises(RuntimeError), session_scope() as session:
        purchase = session.query(Purchase).filter_by(annotation_project_id=pid).first()
        from services.annotation.models import LabelKind
        from services.common.db import utcnow

        labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="9", labelled_by=["x"],
                                adjudicator_id=None, now=utcnow())
        raise RuntimeError("roll back")
    notifications.wait_for_webhooks()
    assert receiver.requests == []
    with session_scope() as session:
        assert session.query(WebhookDelivery).count() == 0  # the outbox row went with the label

    lease = client.post(f"{BASE}/{pid}/queue/next", headers=annotator).json()
    client.post(f"{BASE}/{pid}/assignments/{lease['assignment_id']}/submit",
                json={"submission_id": "w1", "answer": "1"}, headers=annotator)
    notifications.wait_for_webhooks()
    [(headers, body)] = receiver.requests
    assert notifications.verify_signature(made["webhook_secret"], headers["x-rewardhub-timestamp"], body,
                                          headers["x-rewardhub-signature"])
    with session_scope() as session:
        [delivery] = session.query(WebhookDelivery).all()
        assert delivery.state is DeliveryState.delivered and delivery.attempts == 1
        assert headers["x-rewardhub-delivery"] == delivery.id
    payload = json.loads(body)
    assert payload["event"] == "labels" and payload["annotation_project_id"] == pid
    assert [(x["prompt_id"], x["label"], x["seq"]) for x in payload["labels"]] == [("a", "1", 1)]
    assert payload["label_cursor"] == 1


def test_sse_stream_wakes_when_a_label_commits(sqlite_tenant: Tenant) -> None:
    from services.annotation import accounts, queue
    from services.annotation.schemas import Submission

    client = TestClient(create_app())
    made = client.post(BASE, json={"project_id": sqlite_tenant.project_a, "name": "live", "label_budget": 3,
                                   "rollouts_per_prompt": 4, "policy": "random"},
                       headers=bearer(sqlite_tenant.keys["admin"])).json()
    pid = made["id"]
    seed_step(pid, {"a": ["1", "1", "2", None]})
    client.post(f"{BASE}/{pid}/purchases", json={"step": 0, "prompt_ids": ["a"]},
                headers=bearer(sqlite_tenant.keys["trainer"]))
    with session_scope() as session:
        alice = accounts.create_annotator(session, "alice", "correct horse battery", project_ids=[pid]).id

    def fetch(cursor: int) -> list[dict]:
        with session_scope() as session:
            return [x.model_dump(mode="json") for x in labels.labels_since(session, pid, cursor, 10).data]

    def label_it() -> None:
        with session_scope() as session:
            lease = queue.next_task(session, pid, alice)
            queue.submit(session, pid, alice, lease.assignment_id, Submission(submission_id="x", answer="1"))

    async def consume() -> list[bytes]:
        chunks = []
        stream = notifications.label_stream(pid, 0, fetch, limit=1, poll_s=30.0)
        first = await stream.__anext__()  # the retry hint; the stream is now subscribed
        chunks.append(first)
        threading.Thread(target=label_it).start()
        # The poll interval (30 s) exceeds the test's limit: the commit's wake-up must end the wait.
        async for chunk in stream:
            chunks.append(chunk)
        return chunks

    chunks = asyncio.run(asyncio.wait_for(consume(), timeout=20))
    assert chunks[0].startswith(b"retry:")
    assert chunks[1].startswith(b"id: 1\nevent: label\ndata: ") and b'"label":"1"' in chunks[1]

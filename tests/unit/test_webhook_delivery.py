"""Durable webhook deliveries on SQLite: outbox rows, retries with backoff, dead rows, leases, restarts.

The receiver is a real HTTP server on loopback (the SSRF guard lets it through only because the
operator setting allows private addresses). Time is driven through ``deliver_due(now=...)``: no
test sleeps.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.annotation import labels, notifications, tasks, webhooks
from services.annotation.app import create_app
from services.annotation.models import DeliveryState, LabelKind, Purchase, WebhookDelivery
from services.common.db import session_scope, utcnow
from services.common.settings import reset_settings_cache
from tests.conftest import Tenant, bearer
from tests.unit.annotation.test_api import BASE, seed_step


class Receiver:
    """A real HTTP server on loopback that records each POST and answers scripted statuses (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivery_ids(self) -> list[str]:
        with self.lock:
            return [headers["x-rewardhub-delivery"] for headers, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("REWARDHUB_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("REWARDHUB_WEBHOOK_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("REWARDHUB_WEBHOOK_BACKOFF_BASE_S", "30")
    reset_settings_cache()
    server = Receiver()
    yield server
    tasks.cancel_scheduled()
    notifications.wait_for_webhooks()
    server.close()


def hooked_project(tenant: Tenant, url: str) -> tuple[TestClient, str, str]:
    """An annotation project with a webhook and two bought prompts; returns (client, id, secret)."""
    client = TestClient(create_app())
    made = client.post(BASE, json={"project_id": tenant.project_a, "name": "hooked", "label_budget": 5,
                                   "rollouts_per_prompt": 4, "policy": "random", "webhook_url": url},
                       headers=bearer(tenant.keys["admin"])).json()
    seed_step(made["id"], {"a": ["1", "1", "2", None], "b": ["5", "5", "5", "6"]})
    assert client.post(f"{BASE}/{made['id']}/purchases", json={"step": 0, "prompt_ids": ["a", "b"]},
                       headers=bearer(tenant.keys["trainer"])).status_code == 201
    return client, made["id"], made["webhook_secret"]


def label_without_sending(pid: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Commit one label while no sender starts (as if the process died right after its commit)."""
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "kick", lambda *_a, **_k: None)
        with session_scope() as session:
            purchase = session.scalars(select(Purchase).where(Purchase.annotation_project_id == pid)
                                       .order_by(Purchase.id)).first()
            assert purchase is not None
            labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="9", labelled_by=["x"],
                                    adjudicator_id=None, now=utcnow())
    with session_scope() as session:
        [found] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.annotation_project_id == pid)).all()
        return found.id


def row(delivery_id: str) -> WebhookDelivery:
    with session_scope() as session:
        found = session.get(WebhookDelivery, delivery_id)
        assert found is not None
        session.expunge(found)
        return found


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (9, 300), (30, 300)]:
        delays = [webhooks.backoff_s(attempt, 10, 300, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value


def test_a_committed_label_writes_a_row_and_a_fresh_sweeper_sends_it(sqlite_tenant: Tenant, receiver: Receiver,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    assert row(delivery_id).state is DeliveryState.pending and receiver.requests == []

    assert tasks.sweep_webhooks() == {"due": 1}  # what a worker runs at start-up
    notifications.wait_for_webhooks()
    [(headers, body)] = receiver.requests
    assert headers["x-rewardhub-delivery"] == delivery_id and headers["x-rewardhub-delivery-attempt"] == "1"
    assert notifications.verify_signature(secret, headers["x-rewardhub-timestamp"], body,
                                          headers["x-rewardhub-signature"])
    payload = json.loads(body)
    assert payload["event"] == "labels" and [x["label"] for x in payload["labels"]] == ["9"]
    assert payload["event_id"] == row(delivery_id).event_id
    done = row(delivery_id)
    assert done.state is DeliveryState.delivered and done.attempts == 1 and done.last_status_code == 200
    assert done.delivered_at is not None and done.lease_owner is None
    assert tasks.sweep_webhooks() == {"due": 0}  # nothing is sent twice


def test_retries_back_off_keep_the_delivery_id_and_stay_signed(sqlite_tenant: Tenant, receiver: Receiver,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    receiver.statuses = [503, 500, 429]
    now = utcnow()
    waits = []
    for attempt in (1, 2, 3):
        report = webhooks.deliver_due(now=now)
        assert report.retrying == 1 and len(receiver.requests) == attempt
        pending = row(delivery_id)
        assert pending.state is DeliveryState.pending and pending.attempts == attempt
        wait = (pending.next_attempt_at - now).total_seconds()
        assert 30 * 2 ** (attempt - 1) / 2 <= wait <= 30 * 2 ** (attempt - 1)  # base 30 s, doubling
        waits.append(wait)
        # Not due yet: a sender just before the retry time sends nothing.
        assert webhooks.deliver_due(now=pending.next_attempt_at - timedelta(seconds=1)).retrying == 0
        assert len(receiver.requests) == attempt
        now = pending.next_attempt_at
    assert webhooks.deliver_due(now=now).delivered == 1
    assert receiver.delivery_ids() == [delivery_id] * 4
    assert [h["x-rewardhub-delivery-attempt"] for h, _ in receiver.requests] == ["1", "2", "3", "4"]
    for headers, body in receiver.requests:
        assert notifications.verify_signature(secret, headers["x-rewardhub-timestamp"], body,
                                              headers["x-rewardhub-signature"])
    assert len({body for _, body in receiver.requests}) == 1  # the same message every time
    done = row(delivery_id)
    assert done.state is DeliveryState.delivered and done.attempts == 4 and done.last_error is None
    assert waits == sorted(waits)


def test_dead_after_max_attempts_is_kept_and_an_admin_can_redeliver_it(sqlite_tenant: Tenant, receiver: Receiver,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    receiver.statuses = [503] * 4
    now = utcnow()
    for _ in range(4):
        webhooks.deliver_due(now=now)
        now += timedelta(hours=2)
    dead = row(delivery_id)
    assert dead.state is DeliveryState.failed and dead.attempts == 4 and dead.last_status_code == 503
    assert dead.last_error == "WebhookUnavailable: the receiver answered 503"
    assert webhooks.deliver_due(now=now + timedelta(days=1)).retrying == 0 and len(receiver.requests) == 4

    admin = bearer(sqlite_tenant.keys["admin"])
    listed = client.get(f"{BASE}/{pid}/webhook-deliveries", params={"state": "failed"}, headers=admin)
    assert listed.status_code == 200
    body = listed.json()
    assert body["next_cursor"] is None and [d["id"] for d in body["data"]] == [delivery_id]
    assert body["data"][0]["attempts"] == 4 and body["data"][0]["next_attempt_at"] is None
    assert client.get(f"{BASE}/{pid}/webhook-deliveries", headers=bearer(sqlite_tenant.keys["trainer"])
                      ).status_code == 403
    assert client.get(f"{BASE}/{pid}/webhook-deliveries", params={"state": "lost"}, headers=admin
                      ).status_code == 422

    again = client.post(f"{BASE}/{pid}/webhook-deliveries/{delivery_id}/redeliver", headers=admin)
    assert again.status_code == 202 and again.json()["state"] == "pending"
    notifications.wait_for_webhooks()  # the redelivery is sent after its commit
    assert receiver.delivery_ids() == [delivery_id] * 5
    assert row(delivery_id).state is DeliveryState.delivered
    repeat = client.post(f"{BASE}/{pid}/webhook-deliveries/{delivery_id}/redeliver", headers=admin)
    assert repeat.status_code == 409 and repeat.json()["error"]["code"] == "delivery_not_failed"
    missing = client.post(f"{BASE}/{pid}/webhook-deliveries/{'0' * 32}/redeliver", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "delivery_id"


def test_a_client_error_fails_at_once(sqlite_tenant: Tenant, receiver: Receiver,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    receiver.statuses = [410]
    assert webhooks.deliver_due().failed == 1
    dead = row(delivery_id)
    assert dead.state is DeliveryState.failed and dead.attempts == 1 and dead.last_status_code == 410


def test_a_live_lease_is_not_taken_and_a_stranded_one_is(sqlite_tenant: Tenant, receiver: Receiver,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    now = utcnow()
    assert webhooks.claim("dead-sender", now=now, limit=10) == [delivery_id]  # then it dies mid-send
    assert webhooks.deliver_due(now=now + timedelta(seconds=60)).delivered == 0  # its lease (120 s) holds
    assert webhooks.count_due(now + timedelta(seconds=60)) == 0 and receiver.requests == []
    assert webhooks.deliver_due(now=now + timedelta(seconds=121)).delivered == 1
    assert receiver.delivery_ids() == [delivery_id]
    assert row(delivery_id).attempts == 2  # the dead sender's attempt counts
    # The dead sender wakes up: its outcome is not recorded over the new one.
    assert not webhooks.record(delivery_id, "dead-sender", webhooks._Outcome(DeliveryState.failed), 1, now=now)
    assert row(delivery_id).state is DeliveryState.delivered


def test_a_stranded_last_attempt_is_dead(sqlite_tenant: Tenant, receiver: Receiver,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    now = utcnow()
    with session_scope() as session:
        session.get(WebhookDelivery, delivery_id).attempts = 3  # type: ignore[union-attr]
    assert webhooks.claim("dead-sender", now=now, limit=10) == [delivery_id]  # the 4th and last attempt
    assert webhooks.deliver_due(now=now + timedelta(seconds=121)).delivered == 0
    dead = row(delivery_id)
    assert dead.state is DeliveryState.failed and "lease ran out" in (dead.last_error or "")
    assert receiver.requests == []


def test_a_rolled_back_label_writes_no_row(sqlite_tenant: Tenant, receiver: Receiver) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    with pytest.raises(RuntimeError), session_scope() as session:
        purchase = session.scalars(select(Purchase).where(Purchase.annotation_project_id == pid)).first()
        labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="9", labelled_by=["x"],
                                adjudicator_id=None, now=utcnow())
        session.flush()
        assert session.scalar(select(func.count(WebhookDelivery.id))) == 1  # written in the transaction...
        raise RuntimeError("roll back")
    notifications.wait_for_webhooks()
    with session_scope() as session:
        assert session.scalar(select(func.count(WebhookDelivery.id))) == 0  # ...and gone with it
    assert receiver.requests == []


def test_two_labels_in_one_transaction_are_one_delivery(sqlite_tenant: Tenant, receiver: Receiver) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    with session_scope() as session:
        for purchase in session.scalars(select(Purchase).where(Purchase.annotation_project_id == pid)):
            labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="7", labelled_by=["x"],
                                    adjudicator_id=None, now=utcnow())
    notifications.wait_for_webhooks()
    [(_headers, body)] = receiver.requests
    payload = json.loads(body)
    assert [x["seq"] for x in payload["labels"]] == [1, 2] and payload["label_cursor"] == 2


def test_errors_are_stored_without_url_credentials_or_the_secret() -> None:
    exc = RuntimeError("POST https://bob:hunter2@hooks.example:8443/in?token=abc failed; sig whsec_s3cret")
    text = webhooks.describe_error(exc, secret="whsec_s3cret")
    assert text == "RuntimeError: POST https://hooks.example:8443/in failed; sig <secret>"
    assert webhooks.redact_url("http://u:p@[::1]:9/x?y=1#f") == "http://[::1]:9/x"


def test_a_removed_webhook_url_fails_the_row(sqlite_tenant: Tenant, receiver: Receiver,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    assert client.patch(f"{BASE}/{pid}", json={"clear_webhook": True},
                        headers=bearer(sqlite_tenant.keys["admin"])).status_code == 200
    assert webhooks.deliver_due().failed == 1
    assert row(delivery_id).last_error == "the project has no webhook_url any more" and receiver.requests == []


def test_a_failed_first_attempt_schedules_a_local_retry(sqlite_tenant: Tenant, receiver: Receiver,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    delivery_id = label_without_sending(pid, monkeypatch)
    receiver.statuses = [503]
    scheduled: list[datetime] = []
    monkeypatch.setattr(tasks, "schedule_drain", scheduled.append)
    assert tasks.deliver_webhooks.apply(args=[[delivery_id]]).get()["retrying"] == 1
    assert scheduled == [row(delivery_id).next_attempt_at]


def test_a_failed_lookup_at_delivery_is_retried(sqlite_tenant: Tenant, receiver: Receiver,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    assert client.patch(f"{BASE}/{pid}", json={"webhook_url": "http://hooks.invalid/in"},
                        headers=bearer(sqlite_tenant.keys["admin"])).status_code == 200
    delivery_id = label_without_sending(pid, monkeypatch)
    lookups: list[str] = []

    def no_dns(host: str, *_args: object, **_kwargs: object) -> object:
        lookups.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert webhooks.deliver_due().retrying == 1
    pending = row(delivery_id)
    assert pending.state is DeliveryState.pending and pending.attempts == 1 and pending.last_status_code is None
    assert (pending.last_error or "").startswith("ConnectError") and lookups == ["hooks.invalid"]


def test_embedded_default_retries_on_its_own_timer(sqlite_tenant: Tenant, receiver: Receiver,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_WEBHOOK_BACKOFF_BASE_S", "0.2")
    reset_settings_cache()
    client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    receiver.statuses = [503]
    lease = client.post(f"{BASE}/{pid}/queue/next", headers=bearer(sqlite_tenant.keys["annotator"]))
    assert lease.status_code == 200, lease.text
    # The submit's commit kicks a local sender (503); its retry timer sends again without any sweeper.
    client.post(f"{BASE}/{pid}/assignments/{lease.json()['assignment_id']}/submit",
                json={"submission_id": "w1", "answer": "1"}, headers=bearer(sqlite_tenant.keys["annotator"]))
    deadline = time.monotonic() + 20
    while len(receiver.requests) < 2 and time.monotonic() < deadline:  # poll, with a deadline
        notifications.wait_for_webhooks(timeout_s=0.1)
        time.sleep(0.02)
    ids = receiver.delivery_ids()
    assert len(ids) == 2 and len(set(ids)) == 1, ids
    notifications.wait_for_webhooks()
    assert row(ids[0]).state is DeliveryState.delivered


def test_embedded_default_sends_what_a_previous_run_left_with_its_first_label(
        sqlite_tenant: Tenant, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, _secret = hooked_project(sqlite_tenant, receiver.url)
    left_over = label_without_sending(pid, monkeypatch)  # the previous run died after this commit
    monkeypatch.setattr(tasks, "_CAUGHT_UP", False)  # a fresh process
    with session_scope() as session:
        purchase = session.scalars(select(Purchase).where(Purchase.annotation_project_id == pid,
                                                          Purchase.label_seq.is_(None))).first()
        labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="5", labelled_by=["x"],
                                adjudicator_id=None, now=utcnow())
    notifications.wait_for_webhooks()
    sent = receiver.delivery_ids()
    assert left_over in sent and len(sent) == 2 and len(set(sent)) == 2

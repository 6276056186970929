"""Durable webhook deliveries on a real PostgreSQL (and a real Redis with real worker processes).

* a rolled-back label writes no delivery row, a committed one exactly one;
* concurrent senders never send one row twice;
* a delivery survives its process: committed while no sender ran, then a freshly started Celery
  worker's start-up sweep sends it; a worker killed (-9) mid-send leaves the row to the next worker
  once its lease has run out, and the receiver sees the same delivery id both times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from services.annotation import labels, notifications, webhooks
from services.annotation.models import DeliveryState, LabelKind, Purchase, WebhookDelivery
from services.common.db import session_scope, utcnow
from services.common.settings import get_settings, reset_settings_cache
from tests.conftest import Tenant
from tests.unit.test_webhook_delivery import Receiver, hooked_project, label_without_sending

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("REWARDHUB_WEBHOOK_ALLOW_PRIVATE", "true")
    reset_settings_cache()
    server = Receiver()
    yield server
    notifications.wait_for_webhooks()
    server.close()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def state_of(delivery_id: str) -> DeliveryState:
    with session_scope() as session:
        found = session.get(WebhookDelivery, delivery_id)
        assert found is not None
        return found.state


def test_a_rolled_back_label_writes_no_row_and_a_committed_one_writes_one(postgres_tenant: Tenant,
                                                                         receiver: Receiver) -> None:
    _client, pid, _secret = hooked_project(postgres_tenant, receiver.url)

    def label(then_fail: bool) -> None:
        with session_scope() as session:
            purchase = session.scalars(select(Purchase).where(Purchase.annotation_project_id == pid,
                                                              Purchase.label_seq.is_(None))).first()
            assert purchase is not None
            labels.deliver_label(session, purchase, kind=LabelKind.answer, answer="3", labelled_by=["x"],
                                    adjudicator_id=None, now=utcnow())
            session.flush()
            if then_fail:
                raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        label(then_fail=True)
    notifications.wait_for_webhooks()
    with session_scope() as session:
        assert session.scalar(select(func.count(WebhookDelivery.id))) == 0
    assert receiver.requests == []

    label(then_fail=False)
    notifications.wait_for_webhooks()
    with session_scope() as session:
        [row] = session.scalars(select(WebhookDelivery)).all()
        assert row.state is DeliveryState.delivered
    assert receiver.delivery_ids() == [row.id]


def test_concurrent_senders_never_send_a_row_twice(postgres_tenant: Tenant, receiver: Receiver) -> None:
    _client, pid, _secret = hooked_project(postgres_tenant, receiver.url)
    with session_scope() as session:
        rows = [WebhookDelivery(annotation_project_id=pid, event_type="labels", payload={"event": "labels", "n": n},
                                next_attempt_at=utcnow()) for n in range(120)]
        session.add_all(rows)
        session.flush()
        ids = [r.id for r in rows]
    senders = 8
    start = threading.Barrier(senders)
    errors: list[BaseException] = []

    def sender(index: int) -> None:
        try:
            start.wait()
            # Half drain whatever is due, half race for the very same ids (like kicks and sweeps at once).
            while webhooks.count_due():
                webhooks.deliver_due(owner=f"sender-{index}", limit=4, ids=ids if index % 2 else None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    sent = receiver.delivery_ids()
    assert sorted(sent) == sorted(ids), f"{len(sent)} POSTs for {len(ids)} rows, {len(sent) - len(set(sent))} twice"
    with session_scope() as session:
        states = session.execute(select(WebhookDelivery.state, WebhookDelivery.attempts)).all()
        assert set(states) == {(DeliveryState.delivered, 1)}
    print(f"\nconcurrent senders: {senders} senders, {len(ids)} rows, {len(sent)} POSTs, "
          f"{len(sent) - len(set(sent))} duplicated")


# ------------------------------------------------------------------------- real worker processes


class HoldingReceiver(Receiver):
    """A receiver whose first POST is held unanswered until ``release`` (a sender stuck mid-send)."""

    def __init__(self) -> None:
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        super().__init__()
        inner = self.server.RequestHandlerClass
        receiver = self

        class Holding(inner):  # type: ignore[valid-type,misc]
            def do_POST(self) -> None:
                if not receiver.first_arrived.is_set():
                    receiver.first_arrived.set()
                    receiver.release.wait(timeout=120)
                super().do_POST()

        self.server.RequestHandlerClass = Holding


def start_worker(redis_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": get_settings().effective_database_url,
           "REWARDHUB_DATA_DIR": str(data_dir), "REWARDHUB_LOG_JSON": "false",
           "REWARDHUB_WEBHOOK_ALLOW_PRIVATE": "true", "REWARDHUB_JOB_SWEEP_INTERVAL_S": "1"}
    cli = Path(sys.executable).with_name("rewardhub")
    return subprocess.Popen([str(cli), "worker", "--pool", "solo", "--concurrency", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(worker: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, sig)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@pytest.fixture
def holding_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HoldingReceiver]:
    monkeypatch.setenv("REWARDHUB_WEBHOOK_ALLOW_PRIVATE", "true")
    reset_settings_cache()
    server = HoldingReceiver()
    yield server
    server.release.set()
    server.close()


@pytest.mark.redis
@pytest.mark.slow
def test_a_delivery_survives_its_process_and_a_killed_sender(postgres_tenant: Tenant, redis_url: str,
                                                             holding_receiver: HoldingReceiver, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _client, pid, secret = hooked_project(postgres_tenant, holding_receiver.url)
    # Committed while no sender runs: the API process "died" right after its commit.
    delivery_id = label_without_sending(pid, monkeypatch)
    assert state_of(delivery_id) is DeliveryState.pending

    started = time.monotonic()
    first = start_worker(redis_url, tmp_path / "w1")
    try:
        # Its start-up sweep finds the row; the receiver holds that POST unanswered...
        assert holding_receiver.first_arrived.wait(timeout=90), "the first worker never sent the delivery"
        assert state_of(delivery_id) is DeliveryState.delivering
    finally:
        stop(first, signal.SIGKILL)  # ...and the worker is killed mid-send.
    first_sent_s = time.monotonic() - started

    # Its lease has to run out before anyone else may send the row: move the clock past it.
    with session_scope() as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                        .values(lease_until=utcnow() - timedelta(seconds=1)))
    holding_receiver.release.set()
    restarted = time.monotonic()
    second = start_worker(redis_url, tmp_path / "w2")
    try:
        wait_until(lambda: state_of(delivery_id) is DeliveryState.delivered, 90, "the second worker's delivery")
    finally:
        stop(second)
    recovered_s = time.monotonic() - restarted

    requests = [(h, b) for h, b in holding_receiver.requests]
    # The held POST of the killed worker may or may not have been recorded (its socket died); the
    # second worker's POST is recorded, with the same delivery id, as attempt 2.
    assert holding_receiver.delivery_ids() and set(holding_receiver.delivery_ids()) == {delivery_id}
    [(headers, body)] = [(h, b) for h, b in requests if h["x-rewardhub-delivery-attempt"] == "2"]
    assert notifications.verify_signature(secret, headers["x-rewardhub-timestamp"], body,
                                          headers["x-rewardhub-signature"])
    assert [x["label"] for x in json.loads(body)["labels"]] == ["9"]
    with session_scope() as session:
        done = session.get(WebhookDelivery, delivery_id)
        assert done is not None and done.attempts == 2 and done.last_status_code == 200
    print(f"\nrestart: first worker sent after {first_sent_s:.1f} s, killed; second worker delivered "
          f"{recovered_s:.1f} s after start; POSTs seen {len(requests)}, delivery ids {len(set(holding_receiver.delivery_ids()))}")

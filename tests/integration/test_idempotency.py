"""Idempotency keys with leases, on a real PostgreSQL: no key is ever stuck, and the work runs once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from rewardhub.embedded import build_embedded_app
from services.common import idempotency
from services.common.db import get_engine, session_scope, utcnow
from services.common.errors import Conflict
from services.common.idempotency import IdempotencyRecord
from services.gateway import rewards
from services.gateway.models import RewardResultRecord
from tests.conftest import Tenant, bearer
from tests.integration import pg_races

pytestmark = pytest.mark.postgres

MATH = {"type": "math"}
ITEMS = [
    {"id": "half", "completion": "Adding gives \\boxed{\\frac{1}{2}}", "ground_truth": "0.5"},
    {"id": "wrong", "completion": "So the answer is \\boxed{3}.", "ground_truth": "4"},
]


@pytest.fixture
def app(postgres_tenant: Tenant) -> Any:
    return build_embedded_app()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _headers(tenant: Tenant, key: str) -> dict[str, str]:
    return {**bearer(tenant.keys["trainer"]), "Idempotency-Key": key}


def _hash(tenant: Tenant, body: dict[str, Any]) -> str:
    from services.gateway.schemas import RewardsRequest

    parsed = RewardsRequest.model_validate(body)
    return idempotency.fingerprint(parsed.model_dump(mode="json", exclude={"idempotency_key"})
                                   | {"project_id": tenant.project_a})


def _result_rows() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(RewardResultRecord)) or 0)


def _record(key: str) -> IdempotencyRecord | None:
    with session_scope() as session:
        return session.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == key))


# ------------------------------------------------------------------------------------- the helper


def test_expired_lease_is_taken_over_and_a_live_one_is_not(postgres_tenant: Tenant) -> None:
    project = postgres_tenant.project_a
    first = idempotency.claim(project, "t", "k", "h", lease_s=30)
    assert isinstance(first, idempotency.Claim) and not first.took_over
    with pytest.raises(idempotency.InProgress) as live:
        idempotency.claim(project, "t", "k", "h", lease_s=30)
    assert live.value.status_code == 409 and 1 <= live.value.retry_after_s <= 30
    later = utcnow() + timedelta(seconds=31)
    second = idempotency.claim(project, "t", "k", "h", lease_s=30, now=later)
    assert isinstance(second, idempotency.Claim) and second.took_over and second.owner != first.owner
    # The first attempt was only slow, not dead: whichever finishes first stores the one answer.
    idempotency.complete(first, 200, "first")
    with session_scope() as session, pytest.raises(idempotency.AlreadyCompleted) as done:
        idempotency.complete(second, 200, "second", session=session)
    assert done.value.stored == idempotency.Stored(200, "first")
    assert idempotency.claim(project, "t", "k", "h", lease_s=30) == idempotency.Stored(200, "first")
    with pytest.raises(Conflict) as reused:
        idempotency.claim(project, "t", "k", "other", lease_s=30)
    assert reused.value.code == "idempotency_key_reused"


def test_concurrent_claims_have_exactly_one_winner(postgres_tenant: Tenant) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            got = idempotency.claim(postgres_tenant.project_a, "t", "race", "h", lease_s=30)
            outcomes.append("claim" if isinstance(got, idempotency.Claim) else "stored")
        except idempotency.InProgress:
            outcomes.append("in_progress")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["claim"] + ["in_progress"] * 7


def test_transaction_mode_runs_once_under_concurrency(postgres_tenant: Tenant) -> None:
    """annotation's replay/remember: a duplicate waits for the first transaction, then replays it.

    The first claim holds its transaction open until PostgreSQL reports the other three blocked on
    its row; each of them then loses the insert (a unique violation, handled) and replays the answer.
    """
    runs: list[str] = []
    answers: list[str] = []
    barrier = threading.Barrier(4)
    engine = get_engine()

    def attempt(n: int) -> None:
        barrier.wait()
        with session_scope() as session:
            stored = idempotency.replay(session, postgres_tenant.project_a, "annotation/x/undo", "k", "h")
            if stored is not None:
                answers.append(stored.body)
                return
            runs.append(str(n))
            # The work, inside the transaction: it ends only once every duplicate waits on this claim.
            pg_races.await_lock_waiters(engine, 3, lambda: "a duplicate ran too" if len(runs) > 1 else None)
            idempotency.remember(session, postgres_tenant.project_a, "annotation/x/undo", "k", "h", 200, str(n))
            answers.append(str(n))

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    with pg_races.unique_violations(engine) as violations:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(runs) == 1 and answers == [runs[0]] * 4
    assert len(violations) == 3  # every duplicate went through the ``except IntegrityError`` branch


# -------------------------------------------------------------------------------- /v1/rewards


def test_crashed_attempt_leaves_an_expired_lease_and_the_retry_succeeds(client: TestClient,
                                                                      postgres_tenant: Tenant) -> None:
    body = {"spec": MATH, "items": ITEMS, "persist": True}
    # What a gateway killed (-9) after claiming the key leaves behind: a pending row, lease run out.
    with session_scope() as session:
        session.add(IdempotencyRecord(project_id=postgres_tenant.project_a, endpoint="rewards", key="crashed",
                                      request_hash=_hash(postgres_tenant, body), state="pending", owner="dead",
                                      lease_expires_at=utcnow() - timedelta(seconds=1)))
        # ...and a pending row from before leases existed (no lease at all).
        session.add(IdempotencyRecord(project_id=postgres_tenant.project_a, endpoint="rewards", key="legacy",
                                      request_hash=_hash(postgres_tenant, body), state="pending"))
    for key in ("crashed", "legacy"):
        retry = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, key))
        assert retry.status_code == 200, retry.text
        assert [r["score"] for r in retry.json()["results"]] == [1.0, 0.0]
        again = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, key))
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == retry.json()
    assert _result_rows() == 2 * len(ITEMS)


def test_live_claim_answers_409_with_retry_after(client: TestClient, postgres_tenant: Tenant) -> None:
    body = {"spec": MATH, "items": ITEMS}
    with session_scope() as session:
        session.add(IdempotencyRecord(project_id=postgres_tenant.project_a, endpoint="rewards", key="busy",
                                      request_hash=_hash(postgres_tenant, body), state="pending", owner="alive",
                                      lease_expires_at=utcnow() + timedelta(seconds=20)))
    busy = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, "busy"))
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_in_progress"
    assert 1 <= int(busy.headers["retry-after"]) <= 20


def test_store_failure_is_a_503_and_the_retry_runs_again(client: TestClient, postgres_tenant: Tenant,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    real_complete = idempotency.complete
    calls: list[int] = []

    def flaky_complete(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:  # the database went away between grading and storing the answer
            raise OperationalError("UPDATE", {}, Exception("terminating connection due to administrator command"))
        real_complete(*args, **kwargs)

    monkeypatch.setattr(idempotency, "complete", flaky_complete)
    body = {"spec": MATH, "items": ITEMS, "persist": True}
    failed = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, "restart"))
    assert failed.status_code == 503 and failed.headers["retry-after"] == "1", failed.text
    assert _result_rows() == 0  # the results and the answer commit together, or not at all
    retry = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, "restart"))
    assert retry.status_code == 200, retry.text
    assert _result_rows() == len(ITEMS)


def test_concurrent_identical_requests_run_once(app: Any, postgres_tenant: Tenant,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Six identical requests at once: one grades, and it is held until the other five were answered 409."""
    gradings: list[int] = []
    others_answered = asyncio.Event()
    real_post_grade = rewards._post_grade

    async def held_post_grade(*args: Any, **kwargs: Any) -> dict[str, Any]:
        gradings.append(1)
        if len(gradings) > 1:  # a second grading is the bug under test: let every request finish
            others_answered.set()
        await others_answered.wait()
        return await real_post_grade(*args, **kwargs)

    monkeypatch.setattr(rewards, "_post_grade", held_post_grade)
    body = {"spec": MATH, "items": ITEMS, "persist": True}

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            tasks = [asyncio.create_task(client.post("/v1/rewards", json=body,
                                                     headers=_headers(postgres_tenant, "same")))
                     for _ in range(6)]
            for answered, finished in enumerate(asyncio.as_completed(tasks), start=1):
                await finished
                if answered == 5:
                    others_answered.set()
            return [task.result() for task in tasks]

    responses = asyncio.run(scenario())
    codes = sorted(r.status_code for r in responses)
    assert len(gradings) == 1, codes
    assert codes == [200, 409, 409, 409, 409, 409]
    assert all(r.json()["error"]["code"] == "idempotency_in_progress" for r in responses if r.status_code == 409)
    assert _result_rows() == len(ITEMS)
    record = _record("same")
    assert record is not None and record.state == "done"


def test_streaming_client_that_disconnects_can_retry_and_get_the_result(app: Any, client: TestClient,
                                                                         postgres_tenant: Tenant) -> None:
    import json as jsonlib

    body = {"spec": MATH, "items": ITEMS, "stream": True, "persist": True}
    payload = jsonlib.dumps(body).encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in _headers(postgres_tenant, "cut").items()]
    headers.append((b"content-type", b"application/json"))

    async def disconnecting_client() -> list[bytes]:
        """Read the first line of the stream, then drop the connection."""
        got: list[bytes] = []
        gone = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if gone.is_set():
                raise OSError("client disconnected")
            if message["type"] == "http.response.body" and message.get("body"):
                got.append(message["body"])
                gone.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/rewards", "raw_path": b"/v1/rewards", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
        with contextlib.suppress(Exception):  # the server side of a dropped connection may raise
            await app(scope, receive, send)
        # The grading goes on without the client and stores its answer.
        while rewards._JOBS:
            await asyncio.gather(*list(rewards._JOBS), return_exceptions=True)
        return got

    first = asyncio.run(disconnecting_client())
    assert first and b'"type": "result"' in first[0]
    record = _record("cut")
    assert record is not None and record.state == "done"
    retry = client.post("/v1/rewards", json=body, headers=_headers(postgres_tenant, "cut"))
    assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    lines = [jsonlib.loads(line) for line in retry.text.splitlines()]
    assert [line["type"] for line in lines] == ["result", "result", "summary"]
    assert _result_rows() == len(ITEMS)

"""The idempotency helper's branches one by one, on SQLite, with a clock the test sets (issue 23, item 1).

Written to kill the mutants mutmut made of services/common/idempotency.py: every expected value is
typed in (the SHA-256 below is ``sha256sum`` of the canonical text, leases are whole seconds from a
fixed ``now``), never derived from the helper itself. The same paths against PostgreSQL and over
HTTP are in tests/integration/test_idempotency.py and tests/integration/test_unique_races.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common import idempotency
from services.common.db import session_scope
from services.common.errors import Conflict
from services.common.idempotency import AlreadyCompleted, Claim, IdempotencyRecord, InProgress, Stored
from tests.conftest import Tenant

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ENDPOINT = "test.endpoint"


def record(tenant: Tenant, key: str) -> IdempotencyRecord:
    with session_scope() as session:
        found = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == tenant.project_a, IdempotencyRecord.key == key))
        assert found is not None
        session.expunge(found)
        return found


def claimed(tenant: Tenant, key: str, request_hash: str = "h1", *, lease_s: float = 30.0,
            now: datetime = T0) -> Claim:
    held = idempotency.claim(tenant.project_a, ENDPOINT, key, request_hash, lease_s=lease_s, now=now)
    assert isinstance(held, Claim), held
    return held


# --- pure helpers --------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_sorted_compact_json() -> None:
    # sha256sum of the 19 bytes {"a":1,"b":[2,"x"]}
    digest = "454597f51f0e5988dd7d0864f82e826d91fd43ed815a21bb06cd7181e8547a2f"
    assert idempotency.fingerprint({"b": [2, "x"], "a": 1}) == digest
    assert idempotency.fingerprint({"a": 1, "b": [2, "x"]}) == digest


def test_key_from_prefers_the_header_and_flags_the_body_field() -> None:
    assert idempotency.key_from("k-header", "k-body") == ("k-header", False)
    assert idempotency.key_from(None, "k-body") == ("k-body", True)
    assert idempotency.key_from(None, None) == (None, False)
    assert idempotency.key_from("", None) == ("", False)  # an empty header is still the header


def test_a_replayed_response_is_the_stored_answer_marked_as_a_replay() -> None:
    response = idempotency.replayed_response(Stored(status_code=201, body='{"id": "x"}'))
    assert response.status_code == 201
    assert response.body == b'{"id": "x"}'
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.media_type == "application/json"


@pytest.mark.parametrize(("remaining_s", "expected"), [(0.2, 1), (1.0, 1), (2.1, 3), (29.5, 30)])
def test_in_progress_rounds_retry_after_up_to_whole_seconds_and_at_least_one(remaining_s: float,
                                                                             expected: int) -> None:
    error = InProgress(remaining_s)
    assert error.retry_after_s == expected
    assert error.code == "idempotency_in_progress"
    assert error.field == "idempotency_key"


def test_reused_is_a_409_naming_the_key() -> None:
    error = idempotency.reused()
    assert isinstance(error, Conflict)
    assert (error.code, error.field, error.status_code) == ("idempotency_key_reused", "idempotency_key", 409)


def test_already_completed_carries_the_stored_answer() -> None:
    stored = Stored(status_code=200, body="{}")
    assert AlreadyCompleted(stored).stored is stored


@pytest.mark.parametrize(("configured", "budget", "expected"), [
    (None, 2.0, 10.0),  # 3 · 2 = 6 is under the 10 s floor
    (None, 5.0, 15.0),  # 3 · 5
    (None, None, 90.0),  # 3 · http_timeout_s (30 by default)
    ("7", 100.0, 7.0),  # the setting wins over any budget
])
def test_lease_seconds(isolated_env: Path, monkeypatch: pytest.MonkeyPatch, configured: str | None,
                       budget: float | None, expected: float) -> None:
    from services.common.settings import reset_settings_cache

    if configured is not None:
        monkeypatch.setenv("REWARDHUB_IDEMPOTENCY_LEASE_S", configured)
    reset_settings_cache()
    assert idempotency.lease_seconds(budget) == expected


# --- leases: claim / complete / release / renew --------------------------------------------------


def test_a_first_claim_holds_a_lease_from_now(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k", lease_s=30)
    assert (held.project_id, held.endpoint, held.key, held.request_hash) == (sqlite_tenant.project_a, ENDPOINT,
                                                                             "k", "h1")
    assert held.lease_expires_at == datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert held.took_over is False
    row = record(sqlite_tenant, "k")
    assert (row.id, row.state, row.owner, row.attempts) == (held.record_id, "pending", held.owner, 1)
    assert row.lease_expires_at == datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert row.created_at == T0


def test_a_live_lease_answers_in_progress_with_the_time_left(sqlite_tenant: Tenant) -> None:
    claimed(sqlite_tenant, "k", lease_s=30)
    with pytest.raises(InProgress) as caught:
        idempotency.claim(sqlite_tenant.project_a, ENDPOINT, "k", "h1", lease_s=30, now=T0 + timedelta(seconds=12))
    assert caught.value.retry_after_s == 18


def test_a_different_body_under_the_same_key_is_refused(sqlite_tenant: Tenant) -> None:
    claimed(sqlite_tenant, "k", "h1")
    with pytest.raises(Conflict) as caught:
        idempotency.claim(sqlite_tenant.project_a, ENDPOINT, "k", "h2", lease_s=30, now=T0)
    assert caught.value.code == "idempotency_key_reused"


def test_keys_are_scoped_to_project_and_endpoint(sqlite_tenant: Tenant) -> None:
    claimed(sqlite_tenant, "k")
    other_endpoint = idempotency.claim(sqlite_tenant.project_a, "other", "k", "h2", lease_s=30, now=T0)
    other_project = idempotency.claim(sqlite_tenant.project_b, ENDPOINT, "k", "h2", lease_s=30, now=T0)
    assert isinstance(other_endpoint, Claim) and isinstance(other_project, Claim)
    assert other_endpoint.took_over is False and other_project.took_over is False


def test_an_expired_lease_is_taken_over_once(sqlite_tenant: Tenant) -> None:
    first = claimed(sqlite_tenant, "k", lease_s=30)
    later = T0 + timedelta(seconds=30)  # the lease ends at exactly this instant: it may be taken over
    second = claimed(sqlite_tenant, "k", lease_s=10, now=later)
    assert second.took_over is True
    assert second.record_id == first.record_id and second.owner != first.owner
    assert (second.project_id, second.endpoint, second.key, second.request_hash) == (
        sqlite_tenant.project_a, ENDPOINT, "k", "h1")
    assert second.lease_expires_at == datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)
    row = record(sqlite_tenant, "k")
    assert (row.owner, row.attempts, row.lease_expires_at) == (second.owner, 2, datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC))


def test_a_completed_key_returns_the_stored_answer(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k")
    idempotency.complete(held, 201, '{"ok": true}')
    row = record(sqlite_tenant, "k")
    assert (row.state, row.status_code, row.response, row.owner, row.lease_expires_at) == (
        "done", 201, '{"ok": true}', None, None)
    assert row.completed_at is not None
    again = idempotency.claim(sqlite_tenant.project_a, ENDPOINT, "k", "h1", lease_s=30, now=T0)
    assert again == Stored(status_code=201, body='{"ok": true}')


def test_the_second_of_two_completions_gets_the_first_answer(sqlite_tenant: Tenant) -> None:
    first = claimed(sqlite_tenant, "k", lease_s=30)
    second = claimed(sqlite_tenant, "k", now=T0 + timedelta(seconds=31))
    idempotency.complete(second, 200, "second")
    with pytest.raises(AlreadyCompleted) as caught:
        idempotency.complete(first, 200, "first")
    assert caught.value.stored == Stored(status_code=200, body="second")


def test_completing_a_claim_whose_row_is_gone_stores_the_answer_afresh(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k")
    idempotency.release(held)
    idempotency.complete(held, 202, "late")
    row = record(sqlite_tenant, "k")
    assert (row.id, row.state, row.status_code, row.response, row.request_hash, row.endpoint) == (
        held.record_id, "done", 202, "late", "h1", ENDPOINT)


def test_release_frees_the_key_for_an_immediate_retry(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k", lease_s=300)
    idempotency.release(held)
    retry = claimed(sqlite_tenant, "k", lease_s=300)
    assert retry.took_over is False and retry.record_id != held.record_id


def test_release_by_a_former_holder_leaves_the_new_holder_alone(sqlite_tenant: Tenant) -> None:
    first = claimed(sqlite_tenant, "k", lease_s=30)
    second = claimed(sqlite_tenant, "k", now=T0 + timedelta(seconds=31))
    idempotency.release(first)
    assert record(sqlite_tenant, "k").owner == second.owner


def test_release_after_completion_keeps_the_answer(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k")
    idempotency.complete(held, 200, "kept")
    idempotency.release(held)
    assert record(sqlite_tenant, "k").response == "kept"


def test_renew_extends_only_a_live_claim_of_its_holder(sqlite_tenant: Tenant) -> None:
    from services.common.db import utcnow

    first = claimed(sqlite_tenant, "k", lease_s=30)
    before = utcnow()
    assert idempotency.renew(first, 600) is True
    expires = record(sqlite_tenant, "k").lease_expires_at
    assert expires is not None and before + timedelta(seconds=599) <= expires <= utcnow() + timedelta(seconds=600)
    second = claimed(sqlite_tenant, "k", now=expires + timedelta(seconds=1))
    assert idempotency.renew(first, 600) is False  # taken over
    idempotency.complete(second, 200, "done")
    assert idempotency.renew(second, 600) is False  # completed


# --- transaction mode: replay / remember ---------------------------------------------------------


def test_replay_claims_then_remember_stores_and_a_retry_replays(sqlite_tenant: Tenant) -> None:
    project = sqlite_tenant.project_a
    with session_scope() as session:
        assert idempotency.replay(session, project, ENDPOINT, "k", "h1") is None
        assert idempotency.replay(session, project, ENDPOINT, "k", "h1") is None  # the same transaction
        idempotency.remember(session, project, ENDPOINT, "k", "h1", 201, "answer")
    row = record(sqlite_tenant, "k")
    assert (row.state, row.status_code, row.response, row.owner) == ("done", 201, "answer", None)
    assert row.completed_at is not None
    with session_scope() as session:
        assert idempotency.replay(session, project, ENDPOINT, "k", "h1") == Stored(201, "answer")
        with pytest.raises(Conflict) as caught:
            idempotency.replay(session, project, ENDPOINT, "k", "other")
        assert caught.value.code == "idempotency_key_reused"


def test_a_retry_after_a_rolled_back_transaction_runs_the_work_again(sqlite_tenant: Tenant) -> None:
    # The claim rolls back with the work: no pending row survives (on SQLite too, where the SAVEPOINT
    # of the claim once opened, and at its RELEASE committed, the transaction: services/common/db.py).
    project = sqlite_tenant.project_a
    with pytest.raises(RuntimeError), session_scope() as session:
        assert idempotency.replay(session, project, ENDPOINT, "k", "h1") is None
        raise RuntimeError("the work failed")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    with session_scope() as session:
        assert idempotency.replay(session, project, ENDPOINT, "k", "h1") is None
        idempotency.remember(session, project, ENDPOINT, "k", "h1", 200, "second try")
    assert record(sqlite_tenant, "k").response == "second try"


def test_remember_without_a_claim_inserts_the_answer(sqlite_tenant: Tenant) -> None:
    with session_scope() as session:
        idempotency.remember(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1", 200, "direct")
    row = record(sqlite_tenant, "k")
    assert (row.state, row.status_code, row.response, row.request_hash) == ("done", 200, "direct", "h1")
    assert row.completed_at is not None


def test_replay_answers_in_progress_while_a_lease_is_live(sqlite_tenant: Tenant) -> None:
    from services.common.db import utcnow

    held = claimed(sqlite_tenant, "k", lease_s=300, now=utcnow())
    with session_scope() as session, pytest.raises(InProgress) as caught:
        idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1")
    assert 299 <= caught.value.retry_after_s <= 300
    assert record(sqlite_tenant, "k").owner == held.owner


def test_replay_takes_over_an_expired_lease(sqlite_tenant: Tenant) -> None:
    claimed(sqlite_tenant, "k", lease_s=1, now=datetime(2000, 1, 1, tzinfo=UTC))
    with session_scope() as session:
        assert idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1") is None
    row = record(sqlite_tenant, "k")
    assert (row.owner, row.lease_expires_at, row.state) == ("transaction", None, "pending")


def test_a_stored_answer_without_status_or_body_replays_as_200_and_empty(sqlite_tenant: Tenant) -> None:
    with session_scope() as session:
        session.add(IdempotencyRecord(project_id=sqlite_tenant.project_a, endpoint=ENDPOINT, key="k",
                                      request_hash="h1", state="done"))
    with session_scope() as session:
        assert idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1") == Stored(200, "")


# --- messages, non-JSON values, and the retry loops ----------------------------------------------


def test_fingerprint_writes_non_json_values_with_str() -> None:
    # sha256sum of {"t":"2026-01-01 00:00:00"}: str() of the datetime
    assert idempotency.fingerprint({"t": datetime(2026, 1, 1)}) == \
        "ee5428f2edd0e2ab9c8fd0e9f095bdf8795eb87d0ed31a5173f84fcad8cbd94f"


def test_error_messages() -> None:
    assert InProgress(3).message == "a request with this idempotency key is still in progress; retry later"
    assert idempotency.reused().message == "this idempotency key was already used for a different request"
    assert str(AlreadyCompleted(Stored(200, ""))) == "the idempotency key was completed by another attempt"


def test_completing_one_claim_leaves_the_others_pending(sqlite_tenant: Tenant) -> None:
    first, second = claimed(sqlite_tenant, "k1"), claimed(sqlite_tenant, "k2")
    idempotency.complete(first, 200, "one")
    assert record(sqlite_tenant, "k2").state == "pending"
    assert idempotency.renew(second, 60) is True


def test_an_answer_stored_afresh_has_its_completion_time(sqlite_tenant: Tenant) -> None:
    held = claimed(sqlite_tenant, "k")
    idempotency.release(held)
    idempotency.complete(held, 200, "late")
    assert record(sqlite_tenant, "k").completed_at is not None


def test_a_transaction_claim_is_a_pending_row_owned_by_the_transaction(sqlite_tenant: Tenant) -> None:
    with session_scope() as session:
        assert idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1") is None
        row = session.scalar(select(IdempotencyRecord).where(IdempotencyRecord.key == "k"))
        assert row is not None
        assert (row.state, row.owner, row.lease_expires_at, row.request_hash) == ("pending", "transaction", None, "h1")


def stale_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every lookup miss (a read from before a concurrent insert); returns the keys looked up."""
    looked_up: list[str] = []

    def lookup(session: object, project_id: str, endpoint: str, key: str) -> None:
        looked_up.append(key)

    monkeypatch.setattr(idempotency, "_lookup", lookup)
    return looked_up


def test_replay_after_a_lost_insert_reads_the_winners_answer(sqlite_tenant: Tenant,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with session_scope() as session:
        idempotency.remember(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1", 200, "winner")
    real_lookup = idempotency._lookup
    calls: list[int] = []

    def first_read_stale(session: Session, project_id: str, endpoint: str, key: str) -> IdempotencyRecord | None:
        calls.append(1)
        return None if len(calls) == 1 else real_lookup(session, project_id, endpoint, key)

    monkeypatch.setattr(idempotency, "_lookup", first_read_stale)
    with session_scope() as session:
        assert idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1") == Stored(200, "winner")
    assert len(calls) == 2


def test_replay_gives_up_after_three_lost_inserts(sqlite_tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    with session_scope() as session:
        idempotency.remember(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1", 200, "winner")
    looked_up = stale_reads(monkeypatch)
    with session_scope() as session, pytest.raises(InProgress) as caught:
        idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, "k", "h1")
    assert (looked_up, caught.value.retry_after_s) == (["k", "k", "k"], 1)


def test_claim_gives_up_after_five_lost_inserts(sqlite_tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    claimed(sqlite_tenant, "k")
    looked_up = stale_reads(monkeypatch)
    with pytest.raises(InProgress) as caught:
        idempotency.claim(sqlite_tenant.project_a, ENDPOINT, "k", "h1", lease_s=30, now=T0)
    assert (looked_up, caught.value.retry_after_s) == (["k"] * 5, 1)


def test_a_lease_claim_takes_over_only_its_own_transaction_row(sqlite_tenant: Tenant) -> None:
    # Pending rows owned by "transaction" with no lease (a transaction that stored no answer): a
    # lease-mode claim of one key takes over that row and leaves the other key's row alone.
    with session_scope() as session:
        for key in ("k1", "k2"):
            assert idempotency.replay(session, sqlite_tenant.project_a, ENDPOINT, key, "h1") is None
    held = claimed(sqlite_tenant, "k1")
    assert held.took_over is True
    assert record(sqlite_tenant, "k1").owner == held.owner
    assert (record(sqlite_tenant, "k2").owner, record(sqlite_tenant, "k2").attempts) == ("transaction", 1)

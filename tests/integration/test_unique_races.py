"""Two transactions racing on one unique key, on real PostgreSQL: every ``except IntegrityError`` branch runs.

Each test opens a *blocker* transaction that inserts the contested row and stays open, then starts
the code under test on a thread. Its pre-check cannot see the uncommitted row, so its own insert
waits on the blocker's unique-index entry — the test waits until PostgreSQL reports that lock wait —
and only then commits the blocker. The insert fails with a unique violation, so the branch that
handles a lost race must answer (a 409 naming the field, or taking the winner's record), never a 500.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, create_engine, insert, text
from sqlalchemy.engine import Engine

from services.common import idempotency
from services.common.auth import Principal
from services.common.db import session_scope, utcnow
from services.common.errors import Conflict
from services.common.models import Project, Role, new_id
from services.common.settings import get_settings
from services.gateway import reward_specs_store, tenancy
from services.gateway.models import RewardSpecRecord
from tests.conftest import Tenant

pytestmark = pytest.mark.postgres
T = TypeVar("T")
ROOT = Principal(key_id="k-root", role=Role.admin, all_projects=True)


@pytest.fixture
def engine(postgres_tenant: Tenant) -> Iterator[Engine]:
    engine = create_engine(get_settings().effective_database_url)
    yield engine
    engine.dispose()


def _lock_waiters(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one())


@contextmanager
def blocked_race(engine: Engine, block: Callable[[Connection], Any], contender: Callable[[], T]) -> Iterator[Future[T]]:
    """Run ``contender`` while ``block``'s insert is uncommitted; commit it once the contender waits on it."""
    with engine.connect() as blocker, ThreadPoolExecutor(max_workers=1) as pool:
        transaction = blocker.begin()
        block(blocker)
        outcome = pool.submit(contender)
        deadline = time.monotonic() + 30
        while _lock_waiters(engine) == 0:
            assert not outcome.done(), f"the contender finished without waiting on the lock: {outcome.result()!r}"
            assert time.monotonic() < deadline, "the contender never waited on the blocker's row"
            time.sleep(0.02)
        transaction.commit()
        yield outcome


def test_a_project_created_twice_at_once_is_one_project_and_a_409(engine: Engine) -> None:
    def block(connection: Connection) -> None:
        connection.execute(insert(Project).values(id=new_id(), name="raced", description="", created_at=utcnow()))

    def contender() -> str:
        with session_scope() as session:
            return tenancy.create_project(session, ROOT, "raced", "").id

    with blocked_race(engine, block, contender) as outcome, pytest.raises(Conflict) as lost:
        outcome.result(timeout=30)
    assert lost.value.field == "name" and "already exists" in lost.value.message
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM projects WHERE name = 'raced'")).scalar_one() == 1


def test_a_spec_version_taken_concurrently_is_a_409_asking_to_retry(engine: Engine, postgres_tenant: Tenant) -> None:
    project = postgres_tenant.project_a

    def block(connection: Connection) -> None:
        connection.execute(insert(RewardSpecRecord).values(
            id=new_id(), project_id=project, name="raced-spec", version=1, spec={"type": "exact"}, description="",
            created_at=utcnow()))

    def contender() -> int:
        with session_scope() as session:
            return reward_specs_store.add_version(session, project, "raced-spec", {"type": "exact"}, "").version

    with blocked_race(engine, block, contender) as outcome, pytest.raises(Conflict) as lost:
        outcome.result(timeout=30)
    assert lost.value.field == "name" and "retry" in lost.value.message
    with session_scope() as session:  # the retry the message asks for takes the next version
        assert reward_specs_store.add_version(session, project, "raced-spec", {"type": "exact"}, "").version == 2


def test_an_idempotency_key_claimed_at_once_has_one_holder_and_the_other_waits(engine: Engine,
                                                                                postgres_tenant: Tenant) -> None:
    project = postgres_tenant.project_a
    expires = utcnow() + timedelta(seconds=60)

    def block(connection: Connection) -> None:
        connection.execute(insert(idempotency.IdempotencyRecord).values(
            id=new_id(), project_id=project, endpoint="/v1/rewards", key="raced-key", request_hash="h1",
            state="pending", owner="first-attempt", lease_expires_at=expires, created_at=utcnow()))

    def contender() -> Any:
        return idempotency.claim(project, "/v1/rewards", "raced-key", "h1", lease_s=60)

    # The losing insert re-reads the winner's record: a live lease, so retry later (never a 500).
    with blocked_race(engine, block, contender) as outcome, pytest.raises(idempotency.InProgress) as waiting:
        outcome.result(timeout=30)
    assert waiting.value.code == "idempotency_in_progress" and waiting.value.retry_after_s > 0
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT owner FROM idempotency_records WHERE key = 'raced-key'")).all()
    assert [r.owner for r in rows] == ["first-attempt"]

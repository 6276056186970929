"""Two transactions racing on one unique key, on real PostgreSQL: every ``except IntegrityError`` branch runs.

Each test opens a *blocker* transaction that inserts the contested row and stays open, then starts
the code under test on a thread. Its pre-check cannot see the uncommitted row, so its own insert
waits on the blocker's unique-index entry — the test waits until PostgreSQL reports that lock wait —
and only then commits the blocker. The insert fails with a unique violation, so the branch that
handles a lost race must answer (a 409 naming the field, or taking the winner's record), never a 500.
The ``unique_violations`` fixture counts the violations the code under test hit, so a right answer
with one counted proves the ``except`` branch ran. Covered: gateway tenancy (project), reward-spec
versions, lease-mode idempotency claims, annotation accounts (username, an API key's account) and
projects, training datasets, rubric versions and rubric-job checkpoints. (The transaction-mode
idempotency claim races four threads in tests/integration/test_idempotency.py.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, create_engine, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.annotation import accounts
from services.annotation import projects as annotation_projects
from services.annotation.models import AnnotationProject, Annotator, Policy
from services.annotation.schemas import AnnotationProjectCreate
from services.common import idempotency
from services.common.auth import Principal
from services.common.db import get_engine, session_scope, utcnow
from services.common.errors import Conflict
from services.common.models import ApiKey, Project, Role, new_id
from services.common.settings import get_settings
from services.gateway import reward_specs_store, tenancy
from services.gateway.models import RewardSpecRecord
from services.rubric_rm import jobs as rubric_jobs
from services.rubric_rm import store as rubric_store
from services.rubric_rm.models import RubricJob, RubricJobItem, StoredRubric
from services.rubric_rm.schemas import Rubric
from services.trainer import datasets
from services.trainer.confine import datasets_dir
from services.trainer.models import TrainingDataset
from tests.conftest import Tenant
from tests.integration import pg_races

pytestmark = pytest.mark.postgres
T = TypeVar("T")
ROOT = Principal(key_id="k-root", role=Role.admin, all_projects=True)


@pytest.fixture
def engine(postgres_tenant: Tenant) -> Iterator[Engine]:
    engine = create_engine(get_settings().effective_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def unique_violations(postgres_tenant: Tenant) -> Iterator[list[str]]:
    """The unique violations the code under test hit (its engine only, not the blocker's).

    A contender that answered right *and* hit one proves its ``except IntegrityError`` branch ran.
    """
    with pg_races.unique_violations(get_engine()) as seen:
        yield seen


def orm_block(*rows: object) -> Callable[[Connection], None]:
    """A blocker that inserts ORM ``rows`` (their column defaults filled in) in the open transaction."""
    def block(connection: Connection) -> None:
        # Bound to the test's connection, the session flushes into its transaction and never ends it.
        session = Session(bind=connection)
        session.add_all(rows)
        session.flush()
    return block


@contextmanager
def blocked_race(engine: Engine, block: Callable[[Connection], Any], contender: Callable[[], T]) -> Iterator[Future[T]]:
    """Run ``contender`` while ``block``'s insert is uncommitted; commit it once the contender waits on it."""
    with engine.connect() as blocker, ThreadPoolExecutor(max_workers=1) as pool:
        transaction = blocker.begin()
        block(blocker)
        outcome = pool.submit(contender)
        pg_races.await_lock_waiters(engine, 1, lambda: (
            f"the contender finished without waiting on the lock: {outcome.result()!r}" if outcome.done() else None))
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


# ------------------------------------------------------------------- annotation, datasets, rubric store


def test_a_username_registered_twice_at_once_is_one_account_and_a_409(engine: Engine,
                                                                       unique_violations: list[str]) -> None:
    def contender() -> str:
        with session_scope() as session:
            return accounts.create_annotator(session, "raced-user", "a long enough password").id

    block = orm_block(Annotator(username="raced-user", display_name="the winner"))
    with blocked_race(engine, block, contender) as outcome, pytest.raises(Conflict) as lost:
        outcome.result(timeout=30)
    assert (lost.value.field, lost.value.message) == ("username", "username 'raced-user' is taken")
    assert len(unique_violations) == 1
    with session_scope() as session:
        names = session.scalars(select(Annotator.display_name).where(Annotator.username == "raced-user")).all()
    assert names == ["the winner"]


def test_an_api_key_first_seen_twice_at_once_is_one_annotator_account(engine: Engine, postgres_tenant: Tenant,
                                                                        unique_violations: list[str]) -> None:
    with session_scope() as session:
        key_id = session.scalars(select(ApiKey.id).order_by(ApiKey.id)).first()
    assert key_id is not None
    principal = Principal(key_id=key_id, role=Role.trainer, all_projects=False,
                          project_ids=frozenset({postgres_tenant.project_a}))
    winner = Annotator(username=f"{accounts.KEY_USERNAME_PREFIX}{key_id}", api_key_id=key_id)

    def contender() -> str:
        with session_scope() as session:
            return accounts.annotator_for_key(session, principal).id

    # The savepoint rolls back the losing insert and the winner's account is taken (never a 500).
    with blocked_race(engine, orm_block(winner), contender) as outcome:
        assert outcome.result(timeout=30) == winner.id
    assert len(unique_violations) == 1


def test_an_annotation_project_created_twice_at_once_is_one_project_and_a_409(
        engine: Engine, postgres_tenant: Tenant, unique_violations: list[str]) -> None:
    project = postgres_tenant.project_a
    winner = AnnotationProject(project_id=project, name="raced-queue", label_budget=1, label_schema={},
                               policy=Policy.care, webhook_secret="s")

    def contender() -> str:
        with session_scope() as session:
            body = AnnotationProjectCreate(project_id=project, name="raced-queue", label_budget=5)
            return annotation_projects.create(session, ROOT, body).id

    with blocked_race(engine, orm_block(winner), contender) as outcome, pytest.raises(Conflict) as lost:
        outcome.result(timeout=30)
    assert (lost.value.field, lost.value.message) == (
        "name", "an annotation project named 'raced-queue' already exists here")
    assert len(unique_violations) == 1
    with session_scope() as session:
        budgets = session.scalars(select(AnnotationProject.label_budget)
                                  .where(AnnotationProject.name == "raced-queue")).all()
    assert budgets == [1]


ROWS = b'{"prompt": "Say 7.", "reward_model": {"ground_truth": "7"}}\n'


def _dataset_row(project: str, content: bytes) -> TrainingDataset:
    return TrainingDataset(project_id=project, name="raced-set", format="jsonl", filename="raced-set.jsonl",
                           size_bytes=len(content), rows=1, sha256=hashlib.sha256(content).hexdigest())


def test_the_same_dataset_uploaded_twice_at_once_is_one_dataset(engine: Engine, postgres_tenant: Tenant,
                                                                 unique_violations: list[str]) -> None:
    project = postgres_tenant.project_a
    winner = _dataset_row(project, ROWS)

    def contender() -> tuple[str, bool]:
        with session_scope() as session:
            dataset, new = datasets.store(session, project, datasets.Upload("raced-set", ROWS, "jsonl"))
            return dataset.id, new

    # An identical retry that lost the race answers with the winner's dataset, as "not new".
    with blocked_race(engine, orm_block(winner), contender) as outcome:
        assert outcome.result(timeout=30) == (winner.id, False)
    assert len(unique_violations) == 1
    # The loser's bytes never replaced a file: the winner (a bare row here) owns the name.
    assert not (datasets_dir(project) / "raced-set.jsonl").exists()


def test_a_different_dataset_uploaded_under_a_name_taken_at_once_is_a_409(engine: Engine, postgres_tenant: Tenant,
                                                                          unique_violations: list[str]) -> None:
    project = postgres_tenant.project_a

    def contender() -> tuple[str, bool]:
        with session_scope() as session:
            dataset, new = datasets.store(session, project, datasets.Upload("raced-set", ROWS, "jsonl"))
            return dataset.id, new

    block = orm_block(_dataset_row(project, b'{"prompt": "Say 8.", "reward_model": {"ground_truth": "8"}}\n'))
    with blocked_race(engine, block, contender) as outcome, pytest.raises(Conflict) as lost:
        outcome.result(timeout=30)
    assert lost.value.field == "name" and lost.value.message == (
        "name: project already has a different dataset named 'raced-set'; upload under another name")
    assert len(unique_violations) == 1


RUBRIC = Rubric.model_validate({"principles": [{"principle_id": "p1", "description": "be correct"}]})


def test_a_rubric_version_taken_concurrently_is_stored_as_the_next_version(engine: Engine, postgres_tenant: Tenant,
                                                                           unique_violations: list[str]) -> None:
    project, instruction = postgres_tenant.project_a, "2+2?"
    winner = StoredRubric(project_id=project, instruction_hash=rubric_store.instruction_hash(instruction),
                          generator_version="g1", version=1, instruction=instruction, rubric={}, method="winner")

    def contender() -> int:
        with session_scope() as session:
            return rubric_store.save_rubric(session, project, instruction, "g1", RUBRIC, "loser").version

    # Its first try read no version (the winner's was uncommitted) and took 1; the retry reads 1 and takes 2.
    with blocked_race(engine, orm_block(winner), contender) as outcome:
        assert outcome.result(timeout=30) == 2
    assert len(unique_violations) == 1
    with session_scope() as session:
        stored = session.execute(select(StoredRubric.version, StoredRubric.method)
                                 .order_by(StoredRubric.version)).all()
    assert [tuple(row) for row in stored] == [(1, "winner"), (2, "loser")]


def test_a_rubric_job_item_checkpointed_by_two_attempts_at_once_is_stored_once(
        engine: Engine, postgres_tenant: Tenant, unique_violations: list[str]) -> None:
    job_id = new_id()
    job = RubricJob(id=job_id, project_id=postgres_tenant.project_a, kind="judge", total=2, done=1, payload={},
                    owner="second")
    with session_scope() as session:
        session.add(job)
    winner = RubricJobItem(job_id=job_id, item_index=0, result={"by": "first"})

    def contender() -> None:
        rubric_jobs._store_item(job_id, "second", 0, {"by": "second"})

    # The losing attempt's checkpoint and its count roll back together; it does not raise.
    with blocked_race(engine, orm_block(winner), contender) as outcome:
        assert outcome.result(timeout=30) is None
    assert len(unique_violations) == 1
    with session_scope() as session:
        assert session.scalars(select(RubricJobItem.result)).all() == [{"by": "first"}]
        assert session.scalar(select(RubricJob.done).where(RubricJob.id == job_id)) == 1

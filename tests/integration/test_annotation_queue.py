"""The annotator queue and the budget on real PostgreSQL: SKIP LOCKED under load, lease expiry, spend races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from benchmarks.annotation_queue_bench import (
    annotation_service,
    describe,
    queue_engine,
    run_http_load,
    run_load,
    seed_key_annotators,
    seed_queue,
)
from services.annotation import ingestion, locking, projects, purchases, queue
from services.annotation.models import Annotation, AnnotationProject, Assignment, Policy, Purchase, Task
from services.annotation.schemas import PurchaseIn, RolloutGroupIn, StepIn, Submission
from services.common.db import session_scope
from services.common.errors import Conflict
from services.common.settings import get_settings
from tests.conftest import Tenant

pytestmark = pytest.mark.postgres
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.mark.slow
def test_fifty_annotators_pull_and_submit_two_thousand_tasks(postgres_tenant: Tenant) -> None:
    engine = queue_engine(get_settings().effective_database_url, 50)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        project_id, people = seed_queue(factory, postgres_tenant.project_a, tasks=2000, annotators=50, name="load")
        result = run_load(factory, project_id, people, 2000, mode="skip_locked")
    finally:
        engine.dispose()
    print("\n" + describe(result))
    assert result.errors == []
    assert result.double_assignments == 0
    assert result.lost_submissions == 0 and len(result.acknowledged) == 2000
    assert result.tasks_done == 2000 and result.tasks_done_exactly_once == 2000
    assert result.ops == 2000 * 2 + 50  # one pull and one submit per task, one empty pull per annotator


def test_concurrent_sdk_clients_through_the_served_api_take_each_task_once(postgres_tenant: Tenant) -> None:
    # The benchmark's --http path at a small size: the service in processes of its own (two uvicorn
    # workers), ten async SDK clients with a key each, every task leased and submitted exactly once.
    url = get_settings().effective_database_url
    engine = queue_engine(url, 4)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        project_id, _ = seed_queue(factory, postgres_tenant.project_a, tasks=60, annotators=0, name="http")
        keys = seed_key_annotators(factory, postgres_tenant.project_a, 10)
        with annotation_service(url, workers=2) as service_url:
            result = run_http_load(factory, service_url, project_id, keys, 60)
    finally:
        engine.dispose()
    print("\n" + describe(result))
    assert result.errors == []
    assert (result.double_assignments, result.lost_submissions, len(result.acknowledged)) == (0, 0, 60)
    assert result.tasks_done == result.tasks_done_exactly_once == 60
    assert result.ops == 60 * 2 + 10  # one pull and one submit per task, one empty pull per client


def _queue_project(tenant: Tenant, *, budget: int, lease: int = 60) -> str:
    with session_scope() as session:
        project = AnnotationProject(
            project_id=tenant.project_a, name=f"pg-{budget}-{lease}", label_budget=budget,
            label_schema={"free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"},
            overlap_k=1, lease_seconds=lease, rollouts_per_prompt=2, policy=Policy.random, care_params={},
            webhook_secret=projects.new_webhook_secret())
        session.add(project)
        session.flush()
        return project.id


def _post_groups(project_id: str, count: int, step: int = 0) -> list[str]:
    ids = [f"q{step}-{i}" for i in range(count)]
    with session_scope() as session:
        project = locking.lock_project(session, project_id)
        ingestion.store_step(session, project, StepIn(step=step, groups=[
            RolloutGroupIn(prompt_id=pid, prompt_text=f"prompt {pid}", answers=["1", "2"]) for pid in ids]), T0)
    return ids


def test_lease_expiry_returns_the_task_on_postgres(postgres_tenant: Tenant) -> None:
    from services.annotation import accounts

    project_id = _queue_project(postgres_tenant, budget=5, lease=60)
    [pid] = _post_groups(project_id, 1)
    with session_scope() as session:
        purchases.buy_prompts(session, project_id, PurchaseIn(step=0, prompt_ids=[pid]), now=T0)
        alice = accounts.create_annotator(session, "alice", "correct horse battery", project_ids=[project_id]).id
        bob = accounts.create_annotator(session, "bob", "correct horse battery", project_ids=[project_id]).id
    with session_scope() as session:
        lease = queue.next_task(session, project_id, alice, now=T0)
        assert lease is not None
    with session_scope() as session:
        assert queue.next_task(session, project_id, bob, now=T0 + timedelta(seconds=59)) is None
    with session_scope() as session:
        again = queue.next_task(session, project_id, bob, now=T0 + timedelta(seconds=61))
        assert again is not None and again.task_id == lease.task_id
    with session_scope() as session, pytest.raises(Conflict) as stale:
        queue.submit(session, project_id, alice, lease.assignment_id, Submission(submission_id="late", answer="1"),
                     now=T0 + timedelta(seconds=62))
    assert stale.value.code == "lease_expired"
    with session_scope() as session:
        queue.submit(session, project_id, bob, again.assignment_id, Submission(submission_id="b", answer="1"),
                     now=T0 + timedelta(seconds=70))
    with session_scope() as session:
        assert session.scalar(select(func.count(Annotation.id))) == 1
        assert session.scalar(select(func.count(Assignment.id))) == 2


def test_concurrent_purchases_never_overspend_the_budget(postgres_tenant: Tenant) -> None:
    budget, threads, per_call = 25, 16, 3
    project_id = _queue_project(postgres_tenant, budget=budget)
    ids = _post_groups(project_id, threads * per_call)
    accepted: list[int] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def buy(worker: int) -> None:
        mine = ids[worker * per_call:(worker + 1) * per_call]
        barrier.wait()
        try:
            with session_scope() as session:
                out = purchases.buy_prompts(session, project_id, PurchaseIn(step=0, prompt_ids=mine))
                accepted.append(len(out.purchases))
        except Conflict as exc:
            refused.append(exc.code)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=buy, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert sum(accepted) == (budget // per_call) * per_call == 24  # 8 calls fit; the 9th would overspend
    assert set(refused) == {"budget_exceeded"} and len(refused) == threads - budget // per_call
    with session_scope() as session:
        project = session.get(AnnotationProject, project_id)
        bought = session.scalar(select(func.count(Purchase.id)).where(Purchase.annotation_project_id == project_id))
        assert bought == project.labels_bought == 24 <= project.label_budget
        assert session.scalar(select(func.count(Task.id))) == 24

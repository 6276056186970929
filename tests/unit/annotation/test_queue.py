"""The annotator queue on SQLite: leases, expiry, overlap, agreement, adjudication, skip, undo, idempotency."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.annotation import accounts, ingestion, labels, locking, projects, purchases, queue
from services.annotation.models import (
    Annotation,
    AnnotationProject,
    AnnotatorRole,
    Assignment,
    LabelKind,
    Policy,
    Purchase,
    Task,
    TaskStatus,
)
from services.annotation.schemas import Decision, RolloutGroupIn, StepIn, Submission
from services.common.db import session_scope
from services.common.errors import ApiError, Conflict, Forbidden, InvalidInput
from tests.conftest import Tenant

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 300


@dataclass
class Queue:
    project_id: str
    annotators: dict[str, str]  # username -> id


def make_project(tenant: Tenant, *, overlap_k: int = 1, budget: int = 1000, schema: dict | None = None,
                 n: int = 4) -> str:
    with session_scope() as session:
        project = AnnotationProject(
            project_id=tenant.project_a, name=f"q-{overlap_k}-{budget}", label_budget=budget,
            label_schema=schema or {"free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"},
            overlap_k=overlap_k, lease_seconds=LEASE, rollouts_per_prompt=n, policy=Policy.random,
            care_params={}, webhook_secret=projects.new_webhook_secret())
        session.add(project)
        session.flush()
        return project.id


def add_annotators(project_id: str, *names: str, role: AnnotatorRole = AnnotatorRole.annotator) -> dict[str, str]:
    with session_scope() as session:
        return {name: accounts.create_annotator(session, name, "correct horse battery", role=role,
                                                project_ids=[project_id]).id for name in names}


def seed(project_id: str, scores: list[float], *, step: int = 0, answers: list[str | None] | None = None) -> list[str]:
    """Post a step of len(scores) prompts and buy each with its score as the task priority."""
    ids = [f"s{step}-p{i}" for i in range(len(scores))]
    with session_scope() as session:
        project = locking.lock_project(session, project_id)
        body = StepIn(step=step, groups=[
            RolloutGroupIn(prompt_id=pid, prompt_text=f"What is {i}+{i}?",
                           answers=answers or [str(2 * i), str(2 * i), "7", None])
            for i, pid in enumerate(ids)])
        stored = ingestion.store_step(session, project, body, T0)
        for prompt, group, score in zip(stored.prompts, stored.groups, scores, strict=True):
            purchase = purchases.record_purchase(session, project, group, prompt, policy="random", score=score, now=T0)
            session.flush()
            purchases.fulfil(session, project, purchase, priority=score, key_answer=None, now=T0)
    return ids


def answer(submission_id: str, text: str | None = None, *, candidate: int | None = None,
           kind: LabelKind = LabelKind.answer, rationale: str | None = None) -> Submission:
    return Submission(submission_id=submission_id, answer=text, candidate=candidate, kind=kind, rationale=rationale)


@pytest.fixture
def q1(sqlite_tenant: Tenant) -> Queue:
    project_id = make_project(sqlite_tenant)
    return Queue(project_id, add_annotators(project_id, "alice", "bob", "carol"))


def test_next_task_serves_highest_score_first_and_resumes_a_live_lease(q1: Queue) -> None:
    seed(q1.project_id, [0.1, 0.9, 0.5])
    with session_scope() as session:
        first = queue.next_task(session, q1.project_id, q1.annotators["alice"], now=T0)
        assert first is not None and first.prompt_id == "s0-p1" and not first.resumed
        assert first.lease_expires_at == T0 + timedelta(seconds=LEASE)
        assert [c.count for c in first.candidates] == [2, 1] and first.unparseable == 1
    with session_scope() as session:
        again = queue.next_task(session, q1.project_id, q1.annotators["alice"], now=T0 + timedelta(seconds=5))
        assert again is not None and again.assignment_id == first.assignment_id and again.resumed
        second = queue.next_task(session, q1.project_id, q1.annotators["bob"], now=T0)
        assert second is not None and second.prompt_id == "s0-p2"
        third = queue.next_task(session, q1.project_id, q1.annotators["carol"], now=T0)
        assert third is not None and third.prompt_id == "s0-p0"
    with session_scope() as session:
        dave = add_annotators(q1.project_id, "dave")["dave"]
        assert queue.next_task(session, q1.project_id, dave, now=T0) is None  # all three leased


def test_expired_lease_returns_the_task_and_a_stale_submit_is_refused(q1: Queue) -> None:
    seed(q1.project_id, [1.0])
    alice, bob = q1.annotators["alice"], q1.annotators["bob"]
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, alice, now=T0)
        assert lease is not None
    with session_scope() as session:  # one second before expiry the task is still alice's
        assert queue.next_task(session, q1.project_id, bob, now=T0 + timedelta(seconds=LEASE - 1)) is None
    after = T0 + timedelta(seconds=LEASE + 1)
    with session_scope() as session:
        taken = queue.next_task(session, q1.project_id, bob, now=after)
        assert taken is not None and taken.task_id == lease.task_id
    with session_scope() as session, pytest.raises(Conflict) as stale:
        queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("a-1", "2"), now=after)
    assert stale.value.code == "lease_expired" and stale.value.field == "assignment_id"
    with session_scope() as session:
        queue.submit(session, q1.project_id, bob, taken.assignment_id, answer("b-1", "0"), now=after)
    with session_scope() as session:
        assert session.scalar(select(func.count(Annotation.id))) == 1
        assert session.get(Task, lease.task_id).status is TaskStatus.done


def test_renewed_lease_survives_past_its_first_expiry(q1: Queue) -> None:
    seed(q1.project_id, [1.0])
    alice = q1.annotators["alice"]
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, alice, now=T0)
    with session_scope() as session:
        renewed = queue.renew_lease(session, q1.project_id, alice, lease.assignment_id,
                                    now=T0 + timedelta(seconds=LEASE - 10))
        assert renewed.lease_expires_at == T0 + timedelta(seconds=2 * LEASE - 10)
    with session_scope() as session:
        out = queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("a", "0"),
                           now=T0 + timedelta(seconds=LEASE + 10))
        assert out.task_status == "done"


def test_same_submission_id_twice_gives_one_annotation(q1: Queue) -> None:
    seed(q1.project_id, [1.0, 0.5])
    alice = q1.annotators["alice"]
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, alice, now=T0)
    with session_scope() as session:
        first = queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("sub-1", "0"), now=T0)
    with session_scope() as session:
        retry = queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("sub-1", "0"), now=T0)
    assert not first.replayed and retry.replayed and retry.id == first.id
    with session_scope() as session:
        assert session.scalar(select(func.count(Annotation.id))) == 1
        other = queue.next_task(session, q1.project_id, alice, now=T0)
    with session_scope() as session, pytest.raises(Conflict) as reused:
        queue.submit(session, q1.project_id, alice, other.assignment_id, answer("sub-1", "0"), now=T0)
    assert reused.value.code == "idempotency_key_reused"


def test_overlap_k_spreads_a_task_over_k_different_annotators(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, overlap_k=2)
    people = add_annotators(project_id, "alice", "bob", "carol")
    seed(project_id, [1.0])
    with session_scope() as session:
        a = queue.next_task(session, project_id, people["alice"], now=T0)
        b = queue.next_task(session, project_id, people["bob"], now=T0)
        assert a is not None and b is not None and a.task_id == b.task_id
        assert queue.next_task(session, project_id, people["carol"], now=T0) is None
    with session_scope() as session:
        out = queue.submit(session, project_id, people["alice"], a.assignment_id, answer("a", "1/2"), now=T0)
        assert out.task_status == "open"
        # alice answered: she is never offered the task again, and the slot stays taken.
        assert queue.next_task(session, project_id, people["alice"], now=T0) is None
        assert queue.next_task(session, project_id, people["carol"], now=T0) is None
    with session_scope() as session:
        out = queue.submit(session, project_id, people["bob"], b.assignment_id, answer("b", r"\frac{1}{2}"),
                           now=T0 + timedelta(seconds=1))
        assert out.task_status == "done"  # 1/2 ≡ \frac{1}{2}: they agree
    with session_scope() as session:
        task = session.get(Task, a.task_id)
        assert task.agreement == 1.0 and task.final_answer == "1/2"
        purchase = session.get(Purchase, task.purchase_id)
        assert purchase.label == "1/2" and sorted(purchase.labelled_by) == sorted([people["alice"], people["bob"]])


def test_disagreement_goes_to_adjudication_and_a_reviewer_settles_it(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, overlap_k=2)
    people = add_annotators(project_id, "alice", "bob")
    reviewer = add_annotators(project_id, "rita", role=AnnotatorRole.reviewer)["rita"]
    seed(project_id, [1.0])
    with session_scope() as session:
        a = queue.next_task(session, project_id, people["alice"], now=T0)
        b = queue.next_task(session, project_id, people["bob"], now=T0)
    with session_scope() as session:
        queue.submit(session, project_id, people["alice"], a.assignment_id, answer("a", "3"), now=T0)
        out = queue.submit(session, project_id, people["bob"], b.assignment_id,
                           answer("b", kind=LabelKind.ambiguous), now=T0)
        assert out.task_status == "adjudication"
    with session_scope() as session:
        [view] = queue.adjudication_queue(session, project_id).data
        assert view.task_id == a.task_id and view.agreement == 0.5
        assert {s.username for s in view.annotations} == {"alice", "bob"}
        with pytest.raises(Forbidden):
            queue.adjudicate(session, project_id, people["alice"], a.task_id, Decision(answer="3"), now=T0)
    with session_scope() as session:
        queue.adjudicate(session, project_id, reviewer, a.task_id, Decision(candidate=0, rationale="2+2"), now=T0)
    with session_scope() as session:
        task = session.get(Task, a.task_id)
        purchase = session.get(Purchase, task.purchase_id)
        assert task.status is TaskStatus.done and purchase.label == "0" and purchase.adjudicator_id == reviewer
        with pytest.raises(Conflict):
            queue.adjudicate(session, project_id, reviewer, a.task_id, Decision(answer="4"), now=T0)


def test_skip_hands_the_task_to_others_but_never_back(q1: Queue) -> None:
    seed(q1.project_id, [1.0, 0.5])
    alice, bob = q1.annotators["alice"], q1.annotators["bob"]
    with session_scope() as session:
        first = queue.next_task(session, q1.project_id, alice, now=T0)
        assert queue.skip(session, q1.project_id, alice, first.assignment_id, now=T0).state == "skipped"
        assert queue.skip(session, q1.project_id, alice, first.assignment_id, now=T0).state == "skipped"
    with session_scope() as session:
        nxt = queue.next_task(session, q1.project_id, alice, now=T0)
        assert nxt is not None and nxt.task_id != first.task_id
        queue.submit(session, q1.project_id, alice, nxt.assignment_id, answer("a", "2"), now=T0)
        assert queue.next_task(session, q1.project_id, alice, now=T0) is None
        theirs = queue.next_task(session, q1.project_id, bob, now=T0)
        assert theirs is not None and theirs.task_id == first.task_id
    with session_scope() as session, pytest.raises(Conflict):
        queue.skip(session, q1.project_id, alice, nxt.assignment_id, now=T0)


def test_undo_retracts_the_label_and_leases_the_task_again(q1: Queue) -> None:
    seed(q1.project_id, [1.0])
    alice = q1.annotators["alice"]
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, alice, now=T0)
        queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("a1", "5"), now=T0)
    with session_scope() as session:
        feed = labels.labels_since(session, q1.project_id, 0, 100)
        assert [(x.event, x.label) for x in feed.data] == [("labelled", "5")]
    later = T0 + timedelta(seconds=30)
    with session_scope() as session:
        undone = queue.undo_last(session, q1.project_id, alice, now=later)
        assert undone.label_retracted and undone.undone.undone
        assert undone.task.assignment_id == lease.assignment_id and undone.task.resumed
        assert undone.task.lease_expires_at == later + timedelta(seconds=LEASE)
    with session_scope() as session:
        feed = labels.labels_since(session, q1.project_id, 1, 100)
        assert [(x.event, x.label) for x in feed.data] == [("retracted", None)]
        current = queue.current_task(session, q1.project_id, alice, now=later)
        assert current is not None and current.task_id == lease.task_id
        queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("a2", "0"), now=later)
    with session_scope() as session:
        feed = labels.labels_since(session, q1.project_id, 0, 100)
        assert [(x.seq, x.event, x.label) for x in feed.data] == [(3, "labelled", "0")]
        assert session.scalar(select(func.count(Annotation.id)).where(Annotation.undone_at.is_(None))) == 1
        with pytest.raises(Conflict):  # the only live submission was undone once; a2 can be undone, then none
            queue.undo_last(session, q1.project_id, alice, now=later)
            queue.undo_last(session, q1.project_id, alice, now=later)


def test_answers_are_checked_against_the_label_schema(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, schema={"free_form": False, "candidates": True, "ambiguous": False,
                                                     "rationale": "required"})
    alice = add_annotators(project_id, "alice")["alice"]
    seed(project_id, [1.0])
    with session_scope() as session:
        lease = queue.next_task(session, project_id, alice, now=T0)
    bad = [(answer("x", "4", rationale="r"), "answer"), (answer("x", candidate=5, rationale="r"), "candidate"),
           (answer("x", kind=LabelKind.ambiguous, rationale="r"), "kind"), (answer("x", candidate=0), "rationale")]
    for submission, field in bad:
        with session_scope() as session, pytest.raises(InvalidInput) as err:
            queue.submit(session, project_id, alice, lease.assignment_id, submission, now=T0)
        assert err.value.field == field
    with session_scope() as session:
        out = queue.submit(session, project_id, alice, lease.assignment_id,
                           answer("x", candidate=1, rationale="the other cluster"), now=T0)
        assert out.answer == "7" and out.candidate_index == 1


def test_unknown_or_foreign_assignment_is_not_found(q1: Queue) -> None:
    seed(q1.project_id, [1.0])
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, q1.annotators["alice"], now=T0)
    with session_scope() as session, pytest.raises(ApiError) as err:
        queue.submit(session, q1.project_id, q1.annotators["bob"], lease.assignment_id, answer("b", "1"), now=T0)
    assert err.value.status_code == 404 and err.value.field == "assignment_id"


def test_stats_count_queue_leases_agreement_and_throughput(q1: Queue) -> None:
    seed(q1.project_id, [1.0, 0.5, 0.2])
    alice = q1.annotators["alice"]
    with session_scope() as session:
        lease = queue.next_task(session, q1.project_id, alice, now=T0)
        queue.submit(session, q1.project_id, alice, lease.assignment_id, answer("a", "0"),
                     now=T0 + timedelta(seconds=12))
        queue.next_task(session, q1.project_id, q1.annotators["bob"], now=T0)
    with session_scope() as session:
        stats = queue.project_stats(session, q1.project_id, now=T0 + timedelta(seconds=20))
    assert (stats.tasks_open, stats.tasks_done, stats.leases_active) == (2, 1, 1)
    assert (stats.labels_delivered, stats.labels_pending) == (1, 2)
    assert stats.pseudo_label_accuracy == 1.0  # the pseudo-label of s0-p0 is "0"
    [row] = stats.annotators
    assert (row.username, row.submitted, row.mean_seconds) == ("alice", 1, 12.0)
    assert stats.budget.spent == 3


def test_concurrent_annotators_on_sqlite_finish_each_task_exactly_once(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant)
    names = [f"worker{i}" for i in range(6)]
    people = add_annotators(project_id, *names)
    seed(project_id, [float(i % 7) for i in range(40)])
    errors: list[BaseException] = []

    def work(annotator_id: str) -> None:
        try:
            for round_ in range(100):
                with session_scope() as session:
                    view = queue.next_task(session, project_id, annotator_id)
                if view is None:
                    return
                with session_scope() as session:
                    queue.submit(session, project_id, annotator_id, view.assignment_id,
                                 answer(f"{annotator_id}-{round_}", "1"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(people[name],)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with session_scope() as session:
        assert session.scalar(select(func.count(Annotation.id))) == 40
        assert session.scalar(select(func.count(func.distinct(Annotation.task_id)))) == 40
        assert session.scalar(select(func.count(Task.id)).where(Task.status == TaskStatus.done)) == 40
        assert session.scalar(select(func.count(Assignment.id))) == 40

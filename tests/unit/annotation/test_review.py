"""Review of single submissions, task history and editing one's own labels, on SQLite (queue functions)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation import queue, review
from services.annotation.models import (
    AnnotationProject,
    AnnotatorRole,
    Assignment,
    AssignmentState,
    LabelEdit,
    Purchase,
    PurchaseStatus,
    Task,
    TaskStatus,
)
from services.annotation.schemas import Decision, ReviewIn, TaskView
from services.common.db import session_scope
from services.common.errors import Conflict, Forbidden, NotFound
from tests.conftest import Tenant
from tests.unit.annotation.test_queue import T0, add_annotators, answer, make_project, seed

M = TypeVar("M")
ACCEPT, REJECT = ReviewIn(decision="accept"), ReviewIn(decision="reject", comment="off by one")


def _get(session: Session, model: type[M], key: object) -> M:
    row = session.get(model, key)
    assert row is not None
    return row


def _lease(session: Session, project_id: str, annotator_id: str, *, now: datetime) -> TaskView:
    lease = queue.next_task(session, project_id, annotator_id, now=now)
    assert lease is not None
    return lease


def refusal(*, now: datetime = T0 + timedelta(seconds=599), window_s: int = 600, undone: bool = False,
            reviewed: bool = False, adjudicated: bool = False) -> str | None:
    return review.edit_refusal(now=now, submitted_at=T0, window_s=window_s, undone=undone, reviewed=reviewed,
                               adjudicated=adjudicated)


def test_edit_refusal_hand_computed() -> None:
    # window 600 s from 12:00:00: 12:09:59 is inside, 12:10:00 is not (now < submitted + window).
    assert refusal() is None
    assert "edit window" in str(refusal(now=T0 + timedelta(seconds=600)))
    assert "does not allow" in str(refusal(window_s=0))
    assert "reviewer" in str(refusal(reviewed=True))
    assert "adjudication" in str(refusal(adjudicated=True))
    assert "undo" in str(refusal(undone=True))
    assert review.editable_until(T0, 600) == T0 + timedelta(seconds=600)
    assert review.editable_until(T0, 0) is None


def _two_agree(sqlite_tenant: Tenant) -> tuple[str, dict[str, str], str, list[str]]:
    """k=2; alice and bob both answer "0" on one task → done with label "0"."""
    project_id = make_project(sqlite_tenant, overlap_k=2)
    people = add_annotators(project_id, "alice", "bob", "carol")
    people |= add_annotators(project_id, "rita", role=AnnotatorRole.reviewer)
    seed(project_id, [1.0])
    ids = []
    for name in ("alice", "bob"):
        with session_scope() as session:
            lease = _lease(session, project_id, people[name], now=T0)
            assert lease is not None
            ids.append(queue.submit(session, project_id, people[name], lease.assignment_id, answer(name, "0"),
                                    now=T0 + timedelta(seconds=10)).id)
    with session_scope() as session:
        task_id = session.scalar(select(Task.id).where(Task.annotation_project_id == project_id))
        assert task_id is not None
    return project_id, people, task_id, ids


def test_reject_takes_back_the_label_and_reopens_the_task_for_someone_else(sqlite_tenant: Tenant) -> None:
    project_id, people, task_id, (alice_label, bob_label) = _two_agree(sqlite_tenant)
    later = T0 + timedelta(seconds=60)
    with session_scope() as session, pytest.raises(Forbidden):  # an annotator account may not review
        review.review_submission(session, project_id, people["carol"], alice_label, ACCEPT, now=later)
    with session_scope() as session:
        out = review.review_submission(session, project_id, people["rita"], bob_label, REJECT, now=later)
        assert out.decision == "rejected" and out.label_retracted and out.task_status == "open"
        assert out.reviewer == "rita" and out.comment == "off by one" and not out.replayed
    with session_scope() as session:
        task = _get(session, Task, task_id)
        purchase = _get(session, Purchase, task.purchase_id)
        assert task.status is TaskStatus.open and task.agreement is None and task.final_answer is None
        assert purchase.status is PurchaseStatus.pending and purchase.label is None
        states = {a.annotator_id: a.state for a in session.scalars(select(Assignment))}
        assert states[people["bob"]] is AssignmentState.rejected
    with session_scope() as session:  # the same decision again: a no-op; another one: refused
        again = review.review_submission(session, project_id, people["rita"], bob_label, REJECT, now=later)
        assert again.replayed and again.id == out.id
        with pytest.raises(Conflict) as other:
            review.review_submission(session, project_id, people["rita"], bob_label, ACCEPT, now=later)
        assert other.value.code == "already_reviewed" and other.value.field == "decision"
    with session_scope() as session:  # bob is not offered the task again; carol gets bob's freed slot
        assert queue.next_task(session, project_id, people["bob"], now=later) is None
        lease = _lease(session, project_id, people["carol"], now=later)
        assert lease is not None and lease.task_id == task_id
        queue.submit(session, project_id, people["carol"], lease.assignment_id, answer("c", "0"), now=later)
    with session_scope() as session:
        task = _get(session, Task, task_id)
        purchase = _get(session, Purchase, task.purchase_id)
        assert task.status is TaskStatus.done and task.agreement == 1.0
        assert sorted(purchase.labelled_by) == sorted([people["alice"], people["carol"]])  # bob's no longer counts


def test_nobody_reviews_their_own_label_and_a_missing_label_is_404(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant)
    adam = add_annotators(project_id, "adam", role=AnnotatorRole.admin)["adam"]
    seed(project_id, [1.0])
    with session_scope() as session:
        lease = _lease(session, project_id, adam, now=T0)
        label = queue.submit(session, project_id, adam, lease.assignment_id, answer("a", "0"), now=T0).id
    with session_scope() as session, pytest.raises(Forbidden) as own:
        review.review_submission(session, project_id, adam, label, ACCEPT, now=T0)
    assert own.value.field == "annotation_id"
    with session_scope() as session, pytest.raises(NotFound) as missing:
        review.review_submission(session, project_id, adam, "0" * 32, ACCEPT, now=T0)
    assert missing.value.field == "annotation_id"


def test_reject_in_adjudication_reopens_and_a_settled_task_refuses_rejects(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, overlap_k=2)
    people = add_annotators(project_id, "alice", "bob", "carol")
    people |= add_annotators(project_id, "rita", role=AnnotatorRole.reviewer)
    seed(project_id, [1.0, 0.5])
    labels: dict[str, str] = {}
    for name, text in (("alice", "0"), ("bob", "1")):
        with session_scope() as session:
            lease = _lease(session, project_id, people[name], now=T0)
            labels[name] = queue.submit(session, project_id, people[name], lease.assignment_id,
                                        answer(name, text), now=T0).id
    with session_scope() as session:
        task = _get(session, Task, session.scalar(select(Task.id).where(Task.priority == 1.0)))
        assert task.status is TaskStatus.adjudication
        out = review.review_submission(session, project_id, people["rita"], labels["bob"], REJECT, now=T0)
        assert out.task_status == "open" and not out.label_retracted
    with session_scope() as session:  # carol agrees with alice: settled without an adjudication
        lease = _lease(session, project_id, people["carol"], now=T0)
        assert lease is not None and lease.prompt_id == "s0-p0"
        assert queue.submit(session, project_id, people["carol"], lease.assignment_id, answer("c", "0"),
                            now=T0).task_status == "done"
    # The second task: disputed and settled by rita; its labels cannot be rejected any more.
    for name, text in (("alice", "2"), ("bob", "3")):
        with session_scope() as session:
            lease = _lease(session, project_id, people[name], now=T0)
            labels[name + "2"] = queue.submit(session, project_id, people[name], lease.assignment_id,
                                              answer(name + "2", text), now=T0).id
    with session_scope() as session:
        queue.adjudicate(session, project_id, people["rita"], lease.task_id, Decision(answer="2"), now=T0)
    with session_scope() as session, pytest.raises(Conflict) as settled:
        review.review_submission(session, project_id, people["rita"], labels["bob2"], REJECT, now=T0)
    assert settled.value.code == "adjudicated"


def test_edit_keeps_the_old_value_redelivers_and_history_is_in_time_order(sqlite_tenant: Tenant) -> None:
    project_id, people, task_id, (alice_label, bob_label) = _two_agree(sqlite_tenant)
    with session_scope() as session:
        before = _get(session, Purchase, _get(session, Task, task_id).purchase_id).label_seq
    t1 = T0 + timedelta(seconds=100)
    with session_scope() as session:  # alice changes her mind: the labels disagree → retracted, adjudication
        edited = review.edit_label(session, project_id, people["alice"], alice_label, Decision(answer="7"), now=t1)
        assert edited.answer == "7" and edited.task_status == "adjudication" and not edited.replayed
    with session_scope() as session:
        purchase = _get(session, Purchase, _get(session, Task, task_id).purchase_id)
        assert purchase.status is PurchaseStatus.pending and (purchase.label_seq or 0) > (before or 0)
        same = review.edit_label(session, project_id, people["alice"], alice_label, Decision(answer="7"), now=t1)
        assert same.replayed  # the same value again: no edit recorded
    t2 = t1 + timedelta(seconds=5)
    with session_scope() as session:  # and back: unanimous again → delivered with the value
        back = review.edit_label(session, project_id, people["alice"], alice_label, Decision(answer="0"), now=t2)
        assert back.task_status == "done"
    with session_scope() as session:
        purchase = _get(session, Purchase, _get(session, Task, task_id).purchase_id)
        assert purchase.status is PurchaseStatus.labelled and purchase.label == "0"
        assert [(e.old["answer"], e.new["answer"]) for e in session.scalars(
            select(LabelEdit).order_by(LabelEdit.created_at))] == [("0", "7"), ("7", "0")]
    t3 = t2 + timedelta(seconds=5)
    with session_scope() as session:
        review.review_submission(session, project_id, people["rita"], bob_label, ACCEPT, now=t3)
    with session_scope() as session, pytest.raises(Conflict) as reviewed:  # bob's is reviewed: not editable
        review.edit_label(session, project_id, people["bob"], bob_label, Decision(answer="9"), now=t3)
    assert reviewed.value.code == "not_editable" and reviewed.value.field == "annotation_id"
    with session_scope() as session, pytest.raises(NotFound):  # nobody edits someone else's label
        review.edit_label(session, project_id, people["bob"], alice_label, Decision(answer="9"), now=t3)
    with session_scope() as session:
        history = review.task_history(session, project_id, task_id)
    assert [(e.type, e.actor) for e in history.events] == [
        ("label", "alice"), ("label", "bob"), ("edit", "alice"), ("edit", "alice"), ("review", "rita")]
    first = history.events[0]
    assert first.label is not None and first.label.answer == "0"  # the value first submitted
    edit = history.events[2]
    assert edit.previous is not None and edit.label is not None
    assert edit.previous.answer == "0" and edit.label.answer == "7"
    assert history.events[4].decision == "accepted" and history.final is not None and history.final.answer == "0"


def test_the_edit_window_and_my_labels(sqlite_tenant: Tenant) -> None:
    project_id, people, _, (alice_label, _) = _two_agree(sqlite_tenant)
    with session_scope() as session:
        _get(session, AnnotationProject, project_id).label_edit_window_s = 60
    submitted = T0 + timedelta(seconds=10)
    with session_scope() as session:
        page = review.my_labels(session, project_id, people["alice"], now=submitted + timedelta(seconds=59))
        [mine] = page.data
        assert mine.annotation_id == alice_label and mine.editable and mine.editable_until == submitted + \
            timedelta(seconds=60)
        assert mine.label.answer == "0" and mine.task_status == "done" and mine.edits == 0
    late = submitted + timedelta(seconds=60)
    with session_scope() as session:
        [mine] = review.my_labels(session, project_id, people["alice"], now=late).data
        assert not mine.editable and "edit window" in str(mine.not_editable_because)
        with pytest.raises(Conflict) as closed:
            review.edit_label(session, project_id, people["alice"], alice_label, Decision(answer="1"), now=late)
        assert closed.value.code == "not_editable"


def test_undo_of_a_reviewed_label_is_refused(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, overlap_k=2)
    people = add_annotators(project_id, "alice")
    people |= add_annotators(project_id, "rita", role=AnnotatorRole.reviewer)
    seed(project_id, [1.0])
    with session_scope() as session:
        lease = _lease(session, project_id, people["alice"], now=T0)
        label = queue.submit(session, project_id, people["alice"], lease.assignment_id, answer("a", "0"), now=T0).id
    with session_scope() as session:
        review.review_submission(session, project_id, people["rita"], label, ACCEPT, now=T0)
    with session_scope() as session, pytest.raises(Conflict) as refused:
        queue.undo_last(session, project_id, people["alice"], now=T0)
    assert refused.value.code == "reviewed"

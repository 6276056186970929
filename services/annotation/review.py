"""Review of single submissions, each task's history, and annotators editing their own past labels.

Plain functions on a session; the caller commits (the JSON API and the web UI both call them).

- ``review_submission``: a reviewer (or admin) accepts or rejects one label. A rejected label is treated
  like an undone one everywhere (agreement, adjudication, exports): its assignment becomes ``rejected``,
  which holds no slot, so a task left with fewer than k labels is open again (a delivered label is
  retracted from the feed). Its annotator is not offered the task again. One decision per label: the
  same decision again is a no-op, another one is a 409 ``already_reviewed``. Nobody reviews their own label.
- ``edit_label``: an annotator changes their own label while ``edit_refusal`` allows it (the project's
  ``label_edit_window_s`` after submitting, and only before any review or adjudication). The old value
  is kept in ``LabelEdit``; the task's agreement is worked out again (a delivered label is re-delivered
  with the new value, or retracted when the labels now disagree).
- ``task_history``: labels, edits, undos, reviews and adjudications of one task in time order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.annotation.accounts import can_adjudicate
from services.annotation.label_schema import LabelSchema
from services.annotation.labels import retract_label
from services.annotation.locking import lock_task, serialise_on_sqlite
from services.annotation.models import (
    Adjudication,
    Annotation,
    Annotator,
    Assignment,
    AssignmentState,
    LabelEdit,
    LabelKind,
    Prompt,
    Purchase,
    Review,
    ReviewDecision,
    Task,
    TaskStatus,
)
from services.annotation.projects import get_project
from services.annotation.queue import (
    _annotation_out,
    _complete_if_ready,
    _require_annotator,
    resolve_label,
)
from services.annotation.schemas import (
    AnnotationOut,
    Decision,
    HistoryEvent,
    LabelSnapshot,
    MyLabelOut,
    ReviewIn,
    ReviewOut,
    TaskHistoryOut,
)
from services.common.db import utcnow
from services.common.errors import Conflict, Forbidden, NotFound
from services.common.pagination import Page, keyset_page

DECISIONS: dict[str, ReviewDecision] = {"accept": ReviewDecision.accepted, "reject": ReviewDecision.rejected}
# When two events share a timestamp: a label comes before its edits, an edit before a review of it, and so on.
EVENT_ORDER = {"label": 0, "edit": 1, "undo": 2, "review": 3, "adjudication": 4}


def snapshot(annotation: Annotation | Adjudication) -> dict[str, Any]:
    """The stored value of a label (or an adjudication) as one JSON object."""
    return {"kind": annotation.kind.value, "answer": annotation.answer, "candidate_index": annotation.candidate_index,
            "rationale": annotation.rationale, "values": annotation.label_values}


def edit_refusal(*, now: datetime, submitted_at: datetime, window_s: int, undone: bool, reviewed: bool,
                 adjudicated: bool) -> str | None:
    """Why a label may not be edited now, or None when it may.

    Editable ⇔ not undone ∧ not reviewed ∧ task not adjudicated ∧ window_s > 0 ∧ now < submitted_at + window_s.
    """
    if undone:
        return "you took this answer back (undo)"
    if reviewed:
        return "a reviewer already accepted or rejected it"
    if adjudicated:
        return "the task was settled by adjudication"
    if window_s <= 0:
        return "this project does not allow editing labels"
    if now >= submitted_at + timedelta(seconds=window_s):
        return f"the edit window ({window_s} s after submitting) has passed"
    return None


def editable_until(submitted_at: datetime, window_s: int) -> datetime | None:
    return submitted_at + timedelta(seconds=window_s) if window_s > 0 else None


def _names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(session.execute(select(Annotator.id, Annotator.username).where(Annotator.id.in_(ids))).all())


def _annotation_in(session: Session, annotation_project_id: str, annotation_id: str) -> Annotation:
    annotation = session.get(Annotation, annotation_id)
    if annotation is None or annotation.annotation_project_id != annotation_project_id:
        raise NotFound(f"annotation {annotation_id!r} not found", field="annotation_id")
    return annotation


def _adjudicated(session: Session, task_id: str) -> bool:
    return session.scalar(select(Adjudication.id).where(Adjudication.task_id == task_id)) is not None


# ------------------------------------------------------------------------------------------ review


def _review_out(review: Review, reviewer: str, task: Task, *, retracted: bool, replayed: bool) -> ReviewOut:
    return ReviewOut(id=review.id, annotation_id=review.annotation_id, task_id=review.task_id,
                     reviewer_id=review.reviewer_id, reviewer=reviewer, decision=review.decision.value,
                     comment=review.comment, created_at=review.created_at, task_status=task.status.value,
                     label_retracted=retracted, replayed=replayed)


def review_submission(session: Session, annotation_project_id: str, reviewer_id: str, annotation_id: str,
                      body: ReviewIn, *, now: datetime | None = None) -> ReviewOut:
    """Accept or reject one submission (reviewer or admin accounts; never one's own label)."""
    reviewer = _require_annotator(session, reviewer_id)
    if not can_adjudicate(reviewer):
        raise Forbidden("reviewing submissions needs a reviewer or admin annotator account")
    serialise_on_sqlite(session, annotation_project_id)
    annotation = _annotation_in(session, annotation_project_id, annotation_id)
    if annotation.annotator_id == reviewer_id:
        raise Forbidden("you cannot review your own label", field="annotation_id")
    task = lock_task(session, annotation.task_id)
    session.refresh(annotation)
    decision = DECISIONS[body.decision]
    existing = session.scalar(select(Review).where(Review.annotation_id == annotation.id))
    if existing is not None:
        by = _names(session, {existing.reviewer_id}).get(existing.reviewer_id, "")
        if existing.decision is not decision:
            raise Conflict(f"this label was already {existing.decision.value} by {by}; a decision is final",
                           field="decision", code="already_reviewed")
        return _review_out(existing, by, task, retracted=False, replayed=True)
    if annotation.undone_at is not None:
        raise Conflict("its annotator took this label back (undo); there is nothing to review",
                       field="annotation_id", code="label_undone")
    retracted = False
    now = now or utcnow()
    if decision is ReviewDecision.rejected:
        if _adjudicated(session, task.id):
            raise Conflict("this task was settled by adjudication: the reviewer's decision is its label, so its "
                           "labels are no longer rejected one by one", field="annotation_id", code="adjudicated")
        retracted = _reject(session, task, annotation, now)
    review = Review(annotation_id=annotation.id, task_id=task.id, annotation_project_id=annotation_project_id,
                    reviewer_id=reviewer_id, decision=decision, comment=body.comment, created_at=now)
    session.add(review)
    session.flush()
    return _review_out(review, reviewer.username, task, retracted=retracted, replayed=False)


def _reopen(session: Session, task: Task, now: datetime) -> bool:
    """The task needs labels again: open, no final label (a delivered one is retracted). Returns whether one was."""
    retracted = False
    if task.status is TaskStatus.done:
        purchase = session.get(Purchase, task.purchase_id)
        assert purchase is not None
        retract_label(session, purchase, now=now)
        retracted = True
    task.status, task.final_kind, task.final_answer, task.completed_at = TaskStatus.open, None, None, None
    task.agreement = None
    return retracted


def _reject(session: Session, task: Task, annotation: Annotation, now: datetime) -> bool:
    annotation.rejected_at = now
    assignment = session.get(Assignment, annotation.assignment_id)
    assert assignment is not None
    assignment.state = AssignmentState.rejected  # frees its slot; its annotator is not offered the task again
    task.version += 1
    session.flush()
    return _reopen(session, task, now) if task.status is not TaskStatus.open else False


# -------------------------------------------------------------------------------------------- edit


def edit_label(session: Session, annotation_project_id: str, annotator_id: str, annotation_id: str,
               body: Decision, *, now: datetime | None = None) -> AnnotationOut:
    """Change one's own label (``edit_refusal`` says when); the old value goes into the history.
    Sending the value it already has is a no-op (no edit is recorded)."""
    _require_annotator(session, annotator_id)
    serialise_on_sqlite(session, annotation_project_id)
    annotation = _annotation_in(session, annotation_project_id, annotation_id)
    if annotation.annotator_id != annotator_id:
        raise NotFound(f"annotation {annotation_id!r} not found", field="annotation_id")
    task = lock_task(session, annotation.task_id)
    session.refresh(annotation)
    project = get_project(session, annotation_project_id)
    now = now or utcnow()
    reviewed = session.scalar(select(Review.id).where(Review.annotation_id == annotation.id)) is not None
    why = edit_refusal(now=now, submitted_at=annotation.created_at, window_s=project.label_edit_window_s,
                       undone=annotation.undone_at is not None, reviewed=reviewed,
                       adjudicated=_adjudicated(session, task.id))
    if why is not None:
        raise Conflict(f"this label cannot be edited: {why}", field="annotation_id", code="not_editable")
    schema = LabelSchema.model_validate(project.label_schema)
    label = resolve_label(session, schema, task.rollout_group_id, body)
    old = snapshot(annotation)
    new = {"kind": label.kind.value, "answer": label.answer, "candidate_index": label.candidate,
           "rationale": label.rationale, "values": label.values}
    if new == old:
        return _annotation_out(session, annotation, replayed=True, task=task)
    session.add(LabelEdit(annotation_id=annotation.id, task_id=task.id, annotation_project_id=annotation_project_id,
                          annotator_id=annotator_id, old=old, new=new, created_at=now))
    annotation.kind, annotation.answer, annotation.candidate_index = label.kind, label.answer, label.candidate
    annotation.rationale, annotation.label_values, annotation.edited_at = label.rationale, label.values, now
    task.version += 1
    session.flush()
    _recount(session, task, schema, now)
    session.flush()
    return _annotation_out(session, annotation, replayed=False, task=task)


def _recount(session: Session, task: Task, schema: LabelSchema, now: datetime) -> None:
    """After an edit, settle the task again from its live labels: unanimous → (re)delivered with the new
    value; disagreeing → adjudication (a delivered label is retracted); too few → still open."""
    if task.status is TaskStatus.open:
        return
    was_done = task.status is TaskStatus.done
    task.status, task.final_kind, task.final_answer, task.completed_at = TaskStatus.open, None, None, None
    task.agreement = None
    _complete_if_ready(session, task, now, schema)
    if task.status is TaskStatus.done:
        purchase = session.get(Purchase, task.purchase_id)
        assert purchase is not None
        purchase.observed_at = None  # the selector has not seen the new value yet
    elif was_done:  # the labels disagree now: the delivered label no longer stands
        purchase = session.get(Purchase, task.purchase_id)
        assert purchase is not None
        retract_label(session, purchase, now=now)


# ---------------------------------------------------------------------------------------- my labels


def my_labels(session: Session, annotation_project_id: str, annotator_id: str, *, cursor: str | None = None,
              limit: int = 50, now: datetime | None = None) -> Page[MyLabelOut]:
    """The annotator's own labels in the project (undone ones left out), newest first, with whether each
    may still be edited and why not."""
    project = get_project(session, annotation_project_id)
    now = now or utcnow()
    query = select(Annotation).where(Annotation.annotation_project_id == annotation_project_id,
                                     Annotation.annotator_id == annotator_id, Annotation.undone_at.is_(None))
    rows, next_cursor = keyset_page(session, query, (Annotation.created_at, Annotation.id), cursor, limit,
                                    descending=True)
    ids = [a.id for a in rows]
    task_ids = {a.task_id for a in rows}
    reviews = {r.annotation_id: r for r in session.scalars(select(Review).where(Review.annotation_id.in_(ids)))} \
        if ids else {}
    edits = dict(session.execute(select(LabelEdit.annotation_id, func.count(LabelEdit.id))
                                 .where(LabelEdit.annotation_id.in_(ids)).group_by(LabelEdit.annotation_id)).all()) \
        if ids else {}
    tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_(task_ids)))} if task_ids else {}
    prompts = dict(session.execute(select(Prompt.id, Prompt).where(
        Prompt.id.in_({t.prompt_id for t in tasks.values()}))).all()) if tasks else {}
    settled = set(session.scalars(select(Adjudication.task_id).where(Adjudication.task_id.in_(task_ids)))) \
        if task_ids else set()
    out = []
    for a in rows:
        task = tasks[a.task_id]
        prompt = prompts[task.prompt_id]
        review = reviews.get(a.id)
        why = edit_refusal(now=now, submitted_at=a.created_at, window_s=project.label_edit_window_s, undone=False,
                           reviewed=review is not None, adjudicated=task.id in settled)
        out.append(MyLabelOut(
            annotation_id=a.id, task_id=a.task_id, prompt_id=prompt.external_id, prompt_text=prompt.text,
            label=LabelSnapshot.model_validate(snapshot(a)), created_at=a.created_at, edited_at=a.edited_at,
            edits=int(edits.get(a.id, 0)), review=review.decision.value if review is not None else None,
            review_comment=review.comment if review is not None else None, task_status=task.status.value,
            editable=why is None, editable_until=editable_until(a.created_at, project.label_edit_window_s),
            not_editable_because=why))
    return Page(data=out, next_cursor=next_cursor)


def my_label(session: Session, annotation_project_id: str, annotator_id: str, annotation_id: str, *,
             now: datetime | None = None) -> tuple[Annotation, MyLabelOut]:
    """One of the annotator's own labels (the edit page)."""
    annotation = _annotation_in(session, annotation_project_id, annotation_id)
    if annotation.annotator_id != annotator_id or annotation.undone_at is not None:
        raise NotFound(f"annotation {annotation_id!r} not found", field="annotation_id")
    project = get_project(session, annotation_project_id)
    task = session.get(Task, annotation.task_id)
    assert task is not None
    prompt = session.get(Prompt, task.prompt_id)
    assert prompt is not None
    review = session.scalar(select(Review).where(Review.annotation_id == annotation.id))
    edits = int(session.scalar(select(func.count(LabelEdit.id)).where(LabelEdit.annotation_id == annotation.id)) or 0)
    why = edit_refusal(now=now or utcnow(), submitted_at=annotation.created_at, window_s=project.label_edit_window_s,
                       undone=False, reviewed=review is not None, adjudicated=_adjudicated(session, task.id))
    return annotation, MyLabelOut(
        annotation_id=annotation.id, task_id=task.id, prompt_id=prompt.external_id, prompt_text=prompt.text,
        label=LabelSnapshot.model_validate(snapshot(annotation)), created_at=annotation.created_at,
        edited_at=annotation.edited_at, edits=edits, review=review.decision.value if review is not None else None,
        review_comment=review.comment if review is not None else None, task_status=task.status.value,
        editable=why is None, editable_until=editable_until(annotation.created_at, project.label_edit_window_s),
        not_editable_because=why)


# ------------------------------------------------------------------------------------------ history


def _event(kind: Literal["label", "edit", "undo", "review", "adjudication"], at: datetime, actor_id: str,
           names: dict[str, str], **fields: Any) -> HistoryEvent:
    return HistoryEvent(type=kind, at=at, actor_id=actor_id, actor=names.get(actor_id, ""), **fields)


def history_events(annotations: list[Annotation], edits: list[LabelEdit], reviews: list[Review],
                   adjudications: list[Adjudication], names: dict[str, str]) -> list[HistoryEvent]:
    """Every change of a task as events, oldest first (ties: label, edit, undo, review, adjudication).

    A label event shows the value first submitted: the ``old`` of its first edit, else its current value.
    """
    first_old: dict[str, dict[str, Any]] = {}
    for edit in sorted(edits, key=lambda e: (e.created_at, e.id)):
        first_old.setdefault(edit.annotation_id, edit.old)
    keyed: list[tuple[datetime, int, str, HistoryEvent]] = []
    for a in annotations:
        original = first_old.get(a.id, snapshot(a))
        keyed.append((a.created_at, EVENT_ORDER["label"], a.id, _event(
            "label", a.created_at, a.annotator_id, names, annotation_id=a.id,
            label=LabelSnapshot.model_validate(original))))
        if a.undone_at is not None:
            keyed.append((a.undone_at, EVENT_ORDER["undo"], a.id, _event(
                "undo", a.undone_at, a.annotator_id, names, annotation_id=a.id)))
    for e in edits:
        keyed.append((e.created_at, EVENT_ORDER["edit"], e.id, _event(
            "edit", e.created_at, e.annotator_id, names, annotation_id=e.annotation_id,
            label=LabelSnapshot.model_validate(e.new), previous=LabelSnapshot.model_validate(e.old))))
    for r in reviews:
        keyed.append((r.created_at, EVENT_ORDER["review"], r.id, _event(
            "review", r.created_at, r.reviewer_id, names, annotation_id=r.annotation_id,
            decision=r.decision.value, comment=r.comment)))
    for d in adjudications:
        keyed.append((d.created_at, EVENT_ORDER["adjudication"], d.id, _event(
            "adjudication", d.created_at, d.adjudicator_id, names, label=LabelSnapshot.model_validate(snapshot(d)))))
    return [event for *_, event in sorted(keyed, key=lambda k: (k[0], k[1], k[2]))]


def task_history(session: Session, annotation_project_id: str, task_id: str) -> TaskHistoryOut:
    """One task's labels, edits, undos, reviews and adjudication in time order."""
    task = session.get(Task, task_id)
    if task is None or task.annotation_project_id != annotation_project_id:
        raise NotFound(f"task {task_id!r} not found", field="task_id")
    prompt = session.get(Prompt, task.prompt_id)
    assert prompt is not None
    annotations = list(session.scalars(select(Annotation).where(Annotation.task_id == task.id)))
    edits = list(session.scalars(select(LabelEdit).where(LabelEdit.task_id == task.id)))
    reviews = list(session.scalars(select(Review).where(Review.task_id == task.id)))
    adjudications = list(session.scalars(select(Adjudication).where(Adjudication.task_id == task.id)))
    actors = ({a.annotator_id for a in annotations} | {r.reviewer_id for r in reviews}
              | {d.adjudicator_id for d in adjudications})
    final = None
    if task.status is TaskStatus.done and task.final_kind is not None:
        purchase = session.get(Purchase, task.purchase_id)
        final = LabelSnapshot(kind=task.final_kind, answer=task.final_answer if task.final_kind is LabelKind.answer
                              else None, values=purchase.label_values if purchase is not None else None)
    return TaskHistoryOut(task_id=task.id, prompt_id=prompt.external_id, prompt_text=prompt.text,
                          status=task.status.value, overlap_k=task.overlap_k, agreement=task.agreement, final=final,
                          events=history_events(annotations, edits, reviews, adjudications,
                                                _names(session, actors)))


def reviewable(session: Session, annotation_project_id: str, reviewer_id: str, *,
               limit: int = 50) -> list[tuple[Annotation, str, str]]:
    """Live submissions nobody reviewed yet, newest first, that this reviewer may review (not their own):
    (annotation, annotator username, prompt id) — the reviewer screen's list."""
    reviewed = select(Review.id).where(Review.annotation_id == Annotation.id).exists()
    rows = session.execute(
        select(Annotation, Annotator.username, Prompt.external_id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .join(Task, Task.id == Annotation.task_id).join(Prompt, Prompt.id == Task.prompt_id)
        .where(Annotation.annotation_project_id == annotation_project_id, Annotation.undone_at.is_(None),
               Annotation.rejected_at.is_(None), Annotation.annotator_id != reviewer_id, ~reviewed)
        .order_by(Annotation.created_at.desc(), Annotation.id.desc()).limit(limit)).all()
    return [(a, name, external) for a, name, external in rows]

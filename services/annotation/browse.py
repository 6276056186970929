"""The task/record browser: a project's tasks filtered by text, status, annotator, agreement and a
question's final value; one keyset page at a time (``services.common.pagination``).

Statuses (a task's place, derived from its row): ``open`` (waiting for labels), ``disputed``
(labels disagree, waiting for a reviewer), ``labelled`` (settled by agreement), ``adjudicated``
(settled by a reviewer); ``skipped`` is an open task somebody chose "never show again" for.

Choices the issue left open: text search is a case-insensitive substring of the prompt; the
annotator filter takes a username (labels taken back with undo do not count); ``max_agreement``
keeps tasks whose agreement is at most that (tasks without one yet are left out); a question filter
compares the task's *final* label: equal for single_label, free_text and rating, the ``choice``
of a preference pair, the ``answer`` of a math answer, membership for multi_label; ranking cannot
be filtered on (422).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, String, and_, cast, exists, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from services.annotation.label_schema import (
    LabelSchema,
    MathAnswerQuestion,
    MultiLabelQuestion,
    PreferencePairQuestion,
    RankingQuestion,
    RatingQuestion,
)
from services.annotation.models import (
    Adjudication,
    Annotation,
    Annotator,
    Assignment,
    AssignmentState,
    Prompt,
    Purchase,
    Task,
    TaskStatus,
)
from services.annotation.schemas import BrowseRow
from services.common.errors import InvalidInput
from services.common.pagination import Page, keyset_page

STATUSES = ("open", "labelled", "disputed", "adjudicated", "skipped")
PROMPT_PREVIEW = 500


@dataclass
class Filters:
    q: str | None = None
    status: str | None = None
    annotator: str | None = None
    max_agreement: float | None = None
    question: str | None = None
    value: str | None = None


def _like_escaped(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _status_clause(status: str) -> ColumnElement[bool]:
    adjudicated = exists().where(Adjudication.task_id == Task.id)
    if status == "open":
        return Task.status == TaskStatus.open
    if status == "disputed":
        return Task.status == TaskStatus.adjudication
    if status == "labelled":
        return and_(Task.status == TaskStatus.done, ~adjudicated)
    if status == "adjudicated":
        return and_(Task.status == TaskStatus.done, adjudicated)
    return and_(Task.status == TaskStatus.open, exists().where(
        Assignment.task_id == Task.id, Assignment.state == AssignmentState.skipped))


def _value_clause(schema: LabelSchema, question_id: str, value: str) -> ColumnElement[bool]:
    question = next((q for q in schema.questions if q.id == question_id), None)
    if question is None:
        raise InvalidInput(f"question: {question_id!r} is not a question of this project", field="question")
    column = Purchase.label_values
    if isinstance(question, RankingQuestion):
        raise InvalidInput("question: a ranking question cannot be filtered on", field="question")
    if isinstance(question, MultiLabelQuestion):
        # The stored JSON list holds the choice as a quoted string, whatever its spacing.
        return cast(column[question_id], String).like(_like_escaped('"' + value + '"'), escape="\\")
    if isinstance(question, RatingQuestion):
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"value: {value!r} is not a number (question {question_id!r} is a rating)",
                               field="value") from None
        return cast(column[question_id].as_float(), Float) == number
    clause: ColumnElement[bool]
    if isinstance(question, PreferencePairQuestion):
        clause = column[(question_id, "choice")].as_string() == value
    elif isinstance(question, MathAnswerQuestion):
        clause = column[(question_id, "answer")].as_string() == value
    else:
        clause = column[question_id].as_string() == value
    return clause


def filtered(session: Session, annotation_project_id: str, schema: LabelSchema, filters: Filters) -> Select[Any]:
    """``select(Task)`` of the project's tasks that pass every filter given."""
    # Honeypots (gold tasks) are not the project's data: never browsed or exported.
    query = select(Task).where(Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(False))
    if filters.q:
        query = query.where(exists().where(Prompt.id == Task.prompt_id,
                                           func.lower(Prompt.text).like(_like_escaped(filters.q.lower()),
                                                                        escape="\\")))
    if filters.status:
        if filters.status not in STATUSES:
            raise InvalidInput(f"status: one of {', '.join(STATUSES)}", field="status")
        query = query.where(_status_clause(filters.status))
    if filters.annotator:
        annotator_id = session.scalar(select(Annotator.id).where(Annotator.username == filters.annotator))
        if annotator_id is None:
            raise InvalidInput(f"annotator: no annotator {filters.annotator!r}", field="annotator")
        query = query.where(exists().where(Annotation.task_id == Task.id, Annotation.annotator_id == annotator_id,
                                           Annotation.undone_at.is_(None)))
    if filters.max_agreement is not None:
        query = query.where(Task.agreement.is_not(None), Task.agreement <= filters.max_agreement)
    if filters.question or filters.value:
        if not (filters.question and filters.value is not None):
            raise InvalidInput("question: give both question and value", field="question")
        query = query.where(exists().where(Purchase.id == Task.purchase_id,
                                           _value_clause(schema, filters.question, filters.value)))
    return query


def task_status(task: Task, adjudicated: bool, skipped: bool) -> str:
    if task.status is TaskStatus.adjudication:
        return "disputed"
    if task.status is TaskStatus.done:
        return "adjudicated" if adjudicated else "labelled"
    return "skipped" if skipped else "open"


def rows_out(session: Session, tasks: list[Task]) -> list[BrowseRow]:
    """The page's rows with their prompt, labellers, skippers and final values (four queries a page)."""
    if not tasks:
        return []
    ids = [t.id for t in tasks]
    prompts = {p.id: p for p in session.scalars(select(Prompt).where(Prompt.id.in_({t.prompt_id for t in tasks})))}
    finals: dict[str, Any] = dict(session.execute(select(Purchase.id, Purchase.label_values).where(
        Purchase.id.in_([t.purchase_id for t in tasks]))).all())
    labellers: dict[str, list[str]] = {}
    for task_id, name in session.execute(
            select(Annotation.task_id, Annotator.username).join(Annotator, Annotator.id == Annotation.annotator_id)
            .where(Annotation.task_id.in_(ids), Annotation.undone_at.is_(None))
            .order_by(Annotation.created_at, Annotation.id)):
        labellers.setdefault(task_id, []).append(name)
    skippers: dict[str, list[str]] = {}
    for task_id, name in session.execute(
            select(Assignment.task_id, Annotator.username).join(Annotator, Annotator.id == Assignment.annotator_id)
            .where(Assignment.task_id.in_(ids), Assignment.state == AssignmentState.skipped)
            .order_by(Annotator.username)):
        skippers.setdefault(task_id, []).append(name)
    settled = set(session.scalars(select(Adjudication.task_id).where(Adjudication.task_id.in_(ids))))
    out = []
    for task in tasks:
        prompt = prompts[task.prompt_id]
        out.append(BrowseRow(
            task_id=task.id, prompt_id=prompt.external_id, prompt=prompt.text[:PROMPT_PREVIEW],
            status=task_status(task, task.id in settled, task.id in skippers),
            agreement=task.agreement, annotators=labellers.get(task.id, []), skipped_by=skippers.get(task.id, []),
            final_values=finals.get(task.purchase_id or "") if task.status is TaskStatus.done else None,
            metadata=prompt.meta, created_at=task.created_at))
    return out


def browse_page(session: Session, annotation_project_id: str, schema: LabelSchema, filters: Filters,
                cursor: str | None, limit: int) -> Page[BrowseRow]:
    """One page of the filtered tasks, oldest first."""
    query = filtered(session, annotation_project_id, schema, filters)
    tasks, next_cursor = keyset_page(session, query, (Task.created_at, Task.id), cursor, limit)
    return Page(data=rows_out(session, tasks), next_cursor=next_cursor)

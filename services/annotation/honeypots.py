"""Honeypots: gold tasks with hidden answers, mixed into the queue at a set per-project rate.

A honeypot is a prompt with its rollouts (stored at the project's newest step, which a later trainer step
or import may still use: honeypot groups never count as posting a step) and a task
flagged ``honeypot`` that no purchase stands behind: it spends no budget, delivers no label to the
trainer, is never done or adjudicated, and each annotator is served it at most once. Its hidden
answer (``HoneypotKey``) is read only to grade labels. To an annotator a honeypot's lease is a
``TaskView`` like any other: the same fields, filled the same way (see :func:`honeypot_turn` for
when one is served).

Which leases serve a honeypot. The k-th lease an annotator takes in a project (k = how many
assignment rows they hold there already) is a honeypot turn when :func:`honeypot_turn` says so:
a hash of the project's secret seed, the annotator and k, read as a number in [0, 1), is below the
rate. So each lease is a honeypot with probability ``honeypot_rate``, independently, the same
answer every time for the same (seed, annotator, k) (tests replay it exactly), and no annotator
can predict it without the seed, which is never shown. A honeypot turn serves the oldest honeypot
the annotator has not had, and only while a real task is also waiting for them: an annotator with
nothing real left gets nothing, never only honeypots (that would give them away). When no honeypot
is left for them the turn serves a real task.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from services.annotation import ingestion
from services.annotation.equivalence import answers_equivalent
from services.annotation.label_schema import (
    FreeTextQuestion,
    LabelSchema,
    MathAnswerQuestion,
    PreferencePairQuestion,
    Question,
    TaskContext,
    agreement_key,
    check_value,
    preference_responses,
)
from services.annotation.locking import lock_project
from services.annotation.models import (
    Annotation,
    AnnotationProject,
    AnswerSource,
    Assignment,
    HoneypotKey,
    Prompt,
    Task,
)
from services.annotation.schemas import (
    HoneypotIn,
    HoneypotItemStatus,
    HoneypotOut,
    HoneypotsIn,
    HoneypotsList,
    HoneypotsOut,
    RolloutGroupIn,
    StepIn,
)
from services.common.errors import ApiError, InvalidInput

SCALE = 2**64


# ------------------------------------------------------------------------------------- serving


def honeypot_turn(seed: str, annotator_id: str, lease_number: int, rate: float) -> bool:
    """Whether an annotator's ``lease_number``-th lease (from 0) in a project serves a honeypot.

    u = int(first 8 bytes of SHA-256(seed ‖ "\\0" ‖ annotator_id ‖ "\\0" ‖ k), big-endian) / 2⁶⁴ ∈ [0, 1);
    a honeypot turn iff u < rate. For a uniform hash, P(turn) = rate for every k, independently of the
    other leases, so over N leases the number of turns is Binomial(N, rate). rate ≤ 0: never; ≥ 1: always.
    """
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}\0{annotator_id}\0{lease_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / SCALE < rate


def seed_of(project: AnnotationProject) -> str:
    """The project's secret honeypot seed, made on first use (the caller's transaction stores it)."""
    if project.honeypot_seed is None:
        project.honeypot_seed = secrets.token_hex(16)
    return project.honeypot_seed


def lease_number(session: Session, annotation_project_id: str, annotator_id: str) -> int:
    """How many leases (assignment rows, any state) the annotator has taken in the project: the k of the next."""
    return int(session.scalar(select(func.count(Assignment.id)).where(
        Assignment.annotation_project_id == annotation_project_id, Assignment.annotator_id == annotator_id)) or 0)


def unseen_honeypots(annotation_project_id: str, annotator_id: str):  # type: ignore[no-untyped-def]
    """``select(Task)`` of the project's honeypots this annotator has never been leased, oldest first."""
    had = exists().where(Assignment.task_id == Task.id, Assignment.annotator_id == annotator_id)
    return (select(Task).where(Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(True), ~had)
            .order_by(Task.created_at, Task.id).limit(1))


# ------------------------------------------------------------------------------------- grading


def _gold_question(question: Question) -> Question:
    """The question as a hidden answer may answer it: any math form, no rationale required."""
    if isinstance(question, MathAnswerQuestion):
        return question.model_copy(update={"free_form": True, "candidates": True, "ambiguous": True,
                                           "rationale": "optional"})
    if isinstance(question, PreferencePairQuestion):
        return question.model_copy(update={"rationale": "optional"})
    return question


def check_gold(schema: LabelSchema, gold: Mapping[str, Any], context: TaskContext) -> dict[str, Any]:
    """A honeypot's hidden answer checked against the schema: normalised values of the questions it grades.

    Raises InvalidInput naming ``gold.<question id>`` for an unknown question, free text (never graded), a
    value its question refuses; and ``gold`` when it grades no question at all.
    """
    out: dict[str, Any] = {}
    for question_id, value in gold.items():
        question = schema.question(question_id)
        if question is None:
            known = ", ".join(q.id for q in schema.questions)
            raise InvalidInput(f"gold.{question_id}: no such question in this project's label schema "
                               f"(it has: {known})", field=f"gold.{question_id}")
        if isinstance(question, FreeTextQuestion):
            raise InvalidInput(f"gold.{question_id}: free text is not graded; leave it out",
                               field=f"gold.{question_id}")
        if value is None:
            continue
        try:
            out[question_id] = check_value(_gold_question(question), value, context)
        except InvalidInput as exc:
            sub = (exc.field or "").removeprefix(f"values.{question_id}")
            raise InvalidInput(exc.message.replace(f"values.{question_id}", f"gold.{question_id}"),
                               field=f"gold.{question_id}{sub}") from exc
    if not out:
        raise InvalidInput("gold: give the right answer to at least one question", field="gold")
    return out


def _same_math(value: Any, gold: Mapping[str, Any]) -> bool:
    if not isinstance(value, Mapping):
        return False
    if gold.get("kind") == "ambiguous" or value.get("kind") == "ambiguous":
        return value.get("kind") == gold.get("kind")
    return answers_equivalent(gold.get("answer"), value.get("answer"))


def grade(schema: LabelSchema, values: Mapping[str, Any] | None, gold: Mapping[str, Any]) -> bool:
    """A label is right when it matches the hidden answer on every question the answer grades.

    A math answer matches by the queue's equivalence (both ambiguous, or ``answers_equivalent``);
    any other question by ``agreement_key`` (the value without its rationale; a multi-label set; a
    ranking's whole order). A graded question left unanswered is wrong; one the schema no longer
    has is skipped.
    """
    values = values or {}
    for question_id, right in gold.items():
        question = schema.question(question_id)
        if question is None:
            continue
        given = values.get(question_id)
        if given is None:
            return False
        if isinstance(question, MathAnswerQuestion):
            if not _same_math(given, right):
                return False
        elif agreement_key(question, given) != agreement_key(question, right):
            return False
    return True


# ------------------------------------------------------------------------------------- storing


def _context(schema: LabelSchema, item: HoneypotIn) -> TaskContext:
    """What the stored task will offer the questions (the same clusters ``store_step`` makes)."""
    result = ingestion.vote(item.answers)
    clusters = [{"answer": item.answers[c[0]], "members": c} for c in result.clusters]
    pairs = {q.id: preference_responses(item.completions, clusters, q.source)
             for q in schema.questions if isinstance(q, PreferencePairQuestion)}
    return TaskContext(candidates=[str(c["answer"]) for c in clusters], pairs=pairs)


def _refused(index: int, item: HoneypotIn, exc: ApiError) -> HoneypotItemStatus:
    field = exc.field or ""
    field = field.replace("groups[0]", f"items[{index}]") if field.startswith("groups[0]") else f"items[{index}].{field}"
    return HoneypotItemStatus(index=index, prompt_id=item.prompt_id, status="invalid_input", field=field,
                              message=exc.message)


def create(session: Session, annotation_project_id: str, body: HoneypotsIn, now: datetime) -> HoneypotsOut:
    """Store the good items as honeypots (prompts, rollout groups at one step, tasks, hidden answers);
    every item gets its own status. A prompt id the project already has is refused (a honeypot is never
    also a real task)."""
    project = lock_project(session, annotation_project_id)
    if project.answer_source is AnswerSource.answer_key:
        raise InvalidInput("this project is answered by its answer key; it has no annotator queue for honeypots",
                           field="annotation_project_id")
    schema = LabelSchema.model_validate(project.label_schema)
    known = set(session.scalars(select(Prompt.external_id).where(
        Prompt.annotation_project_id == project.id,
        Prompt.external_id.in_([i.prompt_id for i in body.items]))))
    statuses: list[HoneypotItemStatus] = []
    good: list[tuple[int, HoneypotIn, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(body.items):
        if item.prompt_id in known or item.prompt_id in seen:
            where = "this project" if item.prompt_id in known else f"items[{seen[item.prompt_id]}]"
            statuses.append(HoneypotItemStatus(index=index, prompt_id=item.prompt_id, status="conflict",
                                               field=f"items[{index}].prompt_id",
                                               message=f"prompt {item.prompt_id!r} is already in {where}"))
            continue
        try:
            ingestion._check_group_shapes(project, [item])
            gold = check_gold(schema, item.gold, _context(schema, item))
        except ApiError as exc:
            statuses.append(_refused(index, item, exc))
            continue
        seen[item.prompt_id] = index
        statuses.append(HoneypotItemStatus(index=index, prompt_id=item.prompt_id, status="ok"))
        good.append((index, item, gold))
    if not good:
        return HoneypotsOut(created=0, rejected=len(statuses), step=None, items=statuses)
    # The newest step (its tasks are the ones being labelled now), so the step shown is no tell.
    step = body.step if body.step is not None else (project.last_step or 0)
    groups = [RolloutGroupIn(**item.model_dump(exclude={"gold"})) for _, item, _ in good]
    stored = ingestion.store_step(session, project, StepIn(step=step, groups=groups), now, join_posted=True)
    for (index, _item, gold), prompt, group in zip(good, stored.prompts, stored.groups, strict=True):
        task = Task(annotation_project_id=project.id, purchase_id=None, prompt_id=prompt.id,
                    rollout_group_id=group.id, priority=0.0, overlap_k=project.overlap_k, honeypot=True,
                    created_at=now)
        session.add(task)
        session.flush()
        session.add(HoneypotKey(task_id=task.id, annotation_project_id=project.id, values=gold, created_at=now))
        statuses[index].task_id = task.id
    session.flush()
    return HoneypotsOut(created=len(good), rejected=len(statuses) - len(good), step=step, items=statuses)


def listing(session: Session, annotation_project_id: str) -> HoneypotsList:
    """Every honeypot with how often it was served, labelled and answered right (never the answer itself)."""
    project = session.get(AnnotationProject, annotation_project_id)
    assert project is not None
    schema = LabelSchema.model_validate(project.label_schema)
    rows = session.execute(select(Task.id, Prompt.external_id, Task.created_at).join(Prompt, Prompt.id == Task.prompt_id)
                           .where(Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(True))
                           .order_by(Task.created_at, Task.id)).all()
    served = dict(session.execute(select(Assignment.task_id, func.count(Assignment.id))
                                  .join(Task, Task.id == Assignment.task_id)
                                  .where(Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(True))
                                  .group_by(Assignment.task_id)).all())
    tally: dict[str, list[int]] = {}
    for task_id, _annotator, right in results(session, annotation_project_id, schema):
        counts = tally.setdefault(task_id, [0, 0])
        counts[0] += 1
        counts[1] += int(right)
    return HoneypotsList(honeypot_rate=project.honeypot_rate, data=[
        HoneypotOut(task_id=task_id, prompt_id=external_id, created_at=created_at, served=int(served.get(task_id, 0)),
                    labelled=tally.get(task_id, [0, 0])[0], correct=tally.get(task_id, [0, 0])[1])
        for task_id, external_id, created_at in rows])


def results(session: Session, annotation_project_id: str, schema: LabelSchema) -> list[tuple[str, str, bool]]:
    """(task id, annotator id, right?) for every live label on a honeypot of the project."""
    rows = session.execute(
        select(Annotation.task_id, Annotation.annotator_id, Annotation.label_values, HoneypotKey.values)
        .join(HoneypotKey, HoneypotKey.task_id == Annotation.task_id)
        .where(and_(Annotation.annotation_project_id == annotation_project_id, Annotation.undone_at.is_(None),
                    Annotation.rejected_at.is_(None)))
        .order_by(Annotation.created_at, Annotation.id)).all()
    return [(task_id, annotator_id, grade(schema, values, gold)) for task_id, annotator_id, values, gold in rows]


def count(session: Session, annotation_project_id: str) -> int:
    return int(session.scalar(select(func.count(Task.id)).where(
        Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(True))) or 0)

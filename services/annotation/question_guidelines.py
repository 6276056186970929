"""Per-question guidelines: every version kept, and the "read before labelling" gate per question.

A question's guidelines are the ``guidelines`` Markdown of its entry in the label schema (rendered
like the project's: raw HTML escaped, ``$…$`` typeset by KaTeX). Each time a schema is stored
(project create, a schema change, or ``PUT …/questions/{id}/guidelines``), a question whose text
differs from its newest stored version gets a new version row (``QuestionGuidelines``): version
1, 2, … per question; nothing is overwritten, so every earlier text can still be read. Emptying
the text is a version too (the history shows when it was removed).

The gate (the project's ``guidelines_required``) asks an annotator to confirm the current version
of the project's guidelines and of every question's non-empty guidelines; a confirmation records
the version (``QuestionGuidelinesConfirmation``), so a new version asks again and only for what
changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.annotation.label_schema import LabelSchema
from services.annotation.models import (
    AnnotationProject,
    GuidelinesConfirmation,
    QuestionGuidelines,
    QuestionGuidelinesConfirmation,
)
from services.annotation.schemas import (
    GuidelinesStateOut,
    QuestionGuidelinesOut,
    QuestionGuidelinesState,
    QuestionGuidelinesVersion,
)
from services.common.errors import Conflict, NotFound


def newest(session: Session, annotation_project_id: str) -> dict[str, QuestionGuidelines]:
    """Each question's newest stored version (questions never given guidelines are absent)."""
    latest = (select(QuestionGuidelines.question_id, func.max(QuestionGuidelines.version).label("v"))
              .where(QuestionGuidelines.annotation_project_id == annotation_project_id)
              .group_by(QuestionGuidelines.question_id).subquery())
    rows = session.scalars(select(QuestionGuidelines).join(
        latest, (QuestionGuidelines.question_id == latest.c.question_id) & (QuestionGuidelines.version == latest.c.v))
        .where(QuestionGuidelines.annotation_project_id == annotation_project_id))
    return {row.question_id: row for row in rows}


def next_version(latest: QuestionGuidelines | None, text: str) -> int | None:
    """The version a question's text is stored as: None when it equals the newest stored text (no new
    version), else newest + 1 (1 for a first, non-empty text; an empty text with no history is no version)."""
    if latest is None:
        return 1 if text.strip() else None
    return None if latest.text == text else latest.version + 1


def record_versions(session: Session, project: AnnotationProject, now: datetime) -> None:
    """Store a new version for every question of the project's schema whose guidelines changed."""
    schema = LabelSchema.model_validate(project.label_schema)
    stored = newest(session, project.id)
    for question in schema.questions:
        version = next_version(stored.get(question.id), question.guidelines)
        if version is not None:
            session.add(QuestionGuidelines(annotation_project_id=project.id, question_id=question.id,
                                           version=version, text=question.guidelines, created_at=now))
    session.flush()


def current_versions(session: Session, project: AnnotationProject) -> dict[str, int]:
    """Per question of the current schema with non-empty guidelines, their current version."""
    schema = LabelSchema.model_validate(project.label_schema)
    stored = newest(session, project.id)
    return {q.id: stored[q.id].version for q in schema.questions if q.guidelines.strip() and q.id in stored}


def set_text(session: Session, project: AnnotationProject, question_id: str, text: str, now: datetime) -> None:
    """Replace one question's guidelines in the schema (a changed text is a new version)."""
    schema = dict(project.label_schema)
    questions = [dict(q) for q in schema.get("questions", [])]
    for question in questions:
        if question.get("id") == question_id:
            question["guidelines"] = text
            break
    else:
        raise NotFound(f"question {question_id!r} is not in this project's label schema", field="question_id")
    project.label_schema = LabelSchema.model_validate({**schema, "questions": questions}).model_dump()
    session.flush()
    record_versions(session, project, now)


def history(session: Session, project: AnnotationProject, question_id: str) -> QuestionGuidelinesOut:
    schema = LabelSchema.model_validate(project.label_schema)
    question = schema.question(question_id)
    rows = list(session.scalars(select(QuestionGuidelines).where(
        QuestionGuidelines.annotation_project_id == project.id, QuestionGuidelines.question_id == question_id)
        .order_by(QuestionGuidelines.version.desc())))
    if question is None and not rows:
        raise NotFound(f"question {question_id!r} is not in this project's label schema", field="question_id")
    return QuestionGuidelinesOut(
        question_id=question_id, version=rows[0].version if rows else 0,
        guidelines=question.guidelines if question is not None else "",
        versions=[QuestionGuidelinesVersion(version=r.version, text=r.text, created_at=r.created_at) for r in rows])


def _confirmed(session: Session, project_id: str, annotator_id: str) -> dict[str, int]:
    return dict(session.execute(
        select(QuestionGuidelinesConfirmation.question_id, func.max(QuestionGuidelinesConfirmation.version))
        .where(QuestionGuidelinesConfirmation.annotation_project_id == project_id,
               QuestionGuidelinesConfirmation.annotator_id == annotator_id)
        .group_by(QuestionGuidelinesConfirmation.question_id)).all())


def unconfirmed(session: Session, project: AnnotationProject, annotator_id: str) -> dict[str, int]:
    """Questions whose current guidelines version this annotator has not confirmed: id → that version."""
    confirmed = _confirmed(session, project.id, annotator_id)
    return {qid: v for qid, v in current_versions(session, project).items() if confirmed.get(qid) != v}


def confirm(session: Session, project: AnnotationProject, annotator_id: str, versions: Mapping[str, int],
            now: datetime) -> None:
    """Record that the annotator read these questions' guidelines at these versions; a version that is not
    the current one (the text changed meanwhile) is a 409 ``guidelines_changed`` naming the question."""
    current = current_versions(session, project)
    for question_id, version in versions.items():
        if question_id not in current:
            raise NotFound(f"question {question_id!r} has no guidelines to confirm", field=f"questions.{question_id}")
        if version != current[question_id]:
            raise Conflict(f"the guidelines of question {question_id!r} changed (now version "
                           f"{current[question_id]}); read them again", field=f"questions.{question_id}",
                           code="guidelines_changed")
    for question_id, version in versions.items():
        key = (annotator_id, project.id, question_id, version)
        if session.get(QuestionGuidelinesConfirmation, key) is None:
            session.add(QuestionGuidelinesConfirmation(annotator_id=annotator_id, annotation_project_id=project.id,
                                                       question_id=question_id, version=version, confirmed_at=now))
    session.flush()


def state(session: Session, project: AnnotationProject, annotator_id: str,
          needs_confirmation: bool) -> GuidelinesStateOut:
    """The project's and each question's current guidelines, with what this annotator confirmed."""
    schema = LabelSchema.model_validate(project.label_schema)
    versions = current_versions(session, project)
    confirmed = _confirmed(session, project.id, annotator_id)
    project_confirmed = session.scalar(select(func.max(GuidelinesConfirmation.version)).where(
        GuidelinesConfirmation.annotation_project_id == project.id, GuidelinesConfirmation.annotator_id == annotator_id))
    return GuidelinesStateOut(
        guidelines_required=project.guidelines_required, needs_confirmation=needs_confirmation,
        guidelines=project.guidelines, version=project.guidelines_version, confirmed_version=project_confirmed,
        questions=[QuestionGuidelinesState(question_id=q.id, version=versions[q.id], guidelines=q.guidelines,
                                           confirmed_version=confirmed.get(q.id))
                   for q in schema.questions if q.id in versions])

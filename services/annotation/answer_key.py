"""The hidden answer key: answers by trainer prompt id, for simulation and evaluation.

Only the answer-key purchase path, the evaluation-only ``oracle_cag`` policy and evaluation
metrics read it; selection policies never see it, and no endpoint returns it.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.annotation.locking import lock_project
from services.annotation.models import AnnotationProject, AnswerKeyEntry, AnswerSource, Policy
from services.common.errors import InvalidInput

# Ids per IN (…) list: well under every database's bound-parameter limit.
CHUNK = 1000


def needed(project: AnnotationProject) -> bool:
    """Whether the project reads its key: answer-key projects answer with it, oracle_cag selects with it."""
    return project.answer_source is AnswerSource.answer_key or project.policy is Policy.oracle_cag


def answers(session: Session, annotation_project_id: str, external_ids: list[str]) -> dict[str, str]:
    """Hidden answers of these trainer prompt ids (ids without an entry are absent)."""
    return {entry.prompt_external_id: entry.answer for entry in _entries(session, annotation_project_id, external_ids)}


def _entries(session: Session, annotation_project_id: str, external_ids: list[str]) -> list[AnswerKeyEntry]:
    found: list[AnswerKeyEntry] = []
    for start in range(0, len(external_ids), CHUNK):
        found.extend(session.scalars(select(AnswerKeyEntry).where(
            AnswerKeyEntry.annotation_project_id == annotation_project_id,
            AnswerKeyEntry.prompt_external_id.in_(external_ids[start:start + CHUNK]))))
    return found


def size(session: Session, annotation_project_id: str) -> int:
    return int(session.scalar(select(func.count(AnswerKeyEntry.id)).where(
        AnswerKeyEntry.annotation_project_id == annotation_project_id)) or 0)


def upload(session: Session, annotation_project_id: str, entries: list[tuple[str, str]]) -> int:
    """Insert or replace answer-key entries; returns the number stored in the project."""
    lock_project(session, annotation_project_id)
    seen: set[str] = set()
    for index, (prompt_id, _answer) in enumerate(entries):
        if prompt_id in seen:
            raise InvalidInput(f"prompt id {prompt_id!r} appears more than once", field=f"entries[{index}].prompt_id")
        seen.add(prompt_id)
    existing = {e.prompt_external_id: e for e in _entries(session, annotation_project_id, list(seen))}
    for prompt_id, answer in entries:
        if prompt_id in existing:
            existing[prompt_id].answer = answer
        else:
            session.add(AnswerKeyEntry(annotation_project_id=annotation_project_id, prompt_external_id=prompt_id,
                                       answer=answer))
    session.flush()
    return size(session, annotation_project_id)

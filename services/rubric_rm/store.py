"""The versioned rubric store: rubrics cached by (project, instruction hash, generator version).

Each cache key holds versions 1, 2, ...; a lookup returns the newest. A new version is the
previous maximum + 1; two writers racing for the same number are resolved by the unique
constraint (the loser retries with the next number).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.pagination import Page, keyset_page
from services.rubric_rm.models import StoredRubric
from services.rubric_rm.schemas import Rubric, StoredRubricOut

SAVE_ATTEMPTS = 5


def instruction_hash(instruction: str) -> str:
    """SHA-256 (hex) of the instruction's UTF-8 bytes, exactly as given."""
    return hashlib.sha256(instruction.encode("utf-8")).hexdigest()


def latest_rubric(session: Session, project_id: str, instruction: str, generator_version: str) -> StoredRubric | None:
    """The newest stored version for this cache key, or None."""
    return session.scalar(
        select(StoredRubric)
        .where(StoredRubric.project_id == project_id, StoredRubric.instruction_hash == instruction_hash(instruction),
               StoredRubric.generator_version == generator_version)
        .order_by(StoredRubric.version.desc()).limit(1))


def save_rubric(session: Session, project_id: str, instruction: str, generator_version: str, rubric: Rubric,
                method: str) -> StoredRubric:
    """Store ``rubric`` as the next version of its cache key (the pair consistency check is not stored)."""
    digest = instruction_hash(instruction)
    body = rubric.model_dump(mode="json", include={"hard_rules", "principles"})
    for _ in range(SAVE_ATTEMPTS):
        current = session.scalar(select(func.max(StoredRubric.version)).where(
            StoredRubric.project_id == project_id, StoredRubric.instruction_hash == digest,
            StoredRubric.generator_version == generator_version)) or 0
        record = StoredRubric(project_id=project_id, instruction_hash=digest, generator_version=generator_version,
                              version=current + 1, instruction=instruction, rubric=body, method=method)
        try:
            with session.begin_nested():
                session.add(record)
                session.flush()
        except IntegrityError:
            continue  # another writer took this version number; read the maximum again
        return record
    raise RuntimeError(f"could not store a rubric version after {SAVE_ATTEMPTS} attempts (heavy contention)")


def rubric_of(record: StoredRubric) -> Rubric:
    return Rubric.model_validate(record.rubric)


def list_rubrics(session: Session, project_ids: set[str] | None, cursor: str | None,
                 limit: int) -> Page[StoredRubricOut]:
    """One page of the stored rubrics (every version) in ``project_ids`` (None: every project), oldest first."""
    query = select(StoredRubric)
    if project_ids is not None:
        query = query.where(StoredRubric.project_id.in_(project_ids))
    rows, next_cursor = keyset_page(session, query, (StoredRubric.created_at, StoredRubric.id), cursor, limit)
    return Page(data=[StoredRubricOut.model_validate(r, from_attributes=True) for r in rows], next_cursor=next_cursor)

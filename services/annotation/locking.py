"""The annotation service's row locks: the project row, and a task row of the queue.

The project row is the serialisation point for budget spending, selector state and label
numbering. PostgreSQL takes ``FOR NO KEY UPDATE`` on it; SQLite writes it first, which takes the
database's write lock for the rest of the transaction (see ``services.common.locks``). Lock order,
kept by every writer so none deadlock: the project row, then task rows, then purchases.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.annotation.models import AnnotationProject, Task
from services.common.errors import NotFound
from services.common.locks import for_update, write_first_on_sqlite


def project_not_found(annotation_project_id: str) -> NotFound:
    return NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")


def serialise_on_sqlite(session: Session, annotation_project_id: str) -> None:
    """On SQLite, take the database write lock now by writing the project row (no-op on PostgreSQL)."""
    write_first_on_sqlite(session, update(AnnotationProject).where(AnnotationProject.id == annotation_project_id)
                          .values(lock_version=AnnotationProject.lock_version + 1))


def lock_project(session: Session, annotation_project_id: str) -> AnnotationProject:
    """The project row, locked until commit (budget, selector state and label numbering)."""
    serialise_on_sqlite(session, annotation_project_id)
    query = (select(AnnotationProject).where(AnnotationProject.id == annotation_project_id)
             .execution_options(populate_existing=True))
    # FOR NO KEY UPDATE: serialises budget spenders like FOR UPDATE, but lets the queue keep
    # inserting rows that reference the project (their foreign-key checks take KEY SHARE).
    project = session.scalar(for_update(session, query, key_share=True))
    if project is None:
        raise project_not_found(annotation_project_id)
    return project


def lock_task(session: Session, task_id: str) -> Task:
    """A queue task, re-read and (on PostgreSQL) locked until commit."""
    query = select(Task).where(Task.id == task_id).execution_options(populate_existing=True)
    task = session.scalar(for_update(session, query))
    if task is None:
        raise NotFound(f"task {task_id!r} not found", field="task_id")
    return task

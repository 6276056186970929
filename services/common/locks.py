"""Row locks that mean the same on PostgreSQL and on SQLite (the embedded default).

PostgreSQL locks rows: ``SELECT … FOR UPDATE`` (or ``FOR NO KEY UPDATE``, or ``SKIP LOCKED`` for a
work queue). SQLite has no row locks and ignores ``FOR UPDATE``; there the first write of a
transaction takes the database's single write lock until commit, so a caller that needs the rows to
stay put writes first (``write_first_on_sqlite``) and everything after it runs alone.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, Update
from sqlalchemy.orm import Session

RowT = TypeVar("RowT")


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def for_update(session: Session, query: Select[RowT], *, key_share: bool = False, skip_locked: bool = False,
               of: Any = None) -> Select[RowT]:
    """``query`` with ``FOR UPDATE`` on PostgreSQL (``key_share``: ``FOR NO KEY UPDATE``); unchanged on SQLite."""
    if not is_postgres(session):
        return query
    return query.with_for_update(key_share=key_share, skip_locked=skip_locked, of=of)


def write_first_on_sqlite(session: Session, statement: Update) -> None:
    """On SQLite, run ``statement`` now so this transaction holds the database write lock to commit.

    Later reads in the transaction then see the latest data and nobody else writes until commit:
    the equivalent of ``BEGIN IMMEDIATE`` without reopening the session's transaction. A no-op on
    PostgreSQL, where callers lock the rows they need instead.
    """
    if not is_postgres(session):
        session.execute(statement.execution_options(synchronize_session=False))

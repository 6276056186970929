"""Deterministic races on real PostgreSQL: wait for a lock wait, count the unique violations that happened.

No sleeps decide an outcome here: a racing transaction is known to be blocked when PostgreSQL lists
it as waiting on a lock, and a handled ``except IntegrityError`` branch is known to have run when the
engine saw the unique violation (SQLSTATE 23505) and the caller still got its answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, ExceptionContext

UNIQUE_VIOLATION = "23505"
# Only a guard against a hang: the wait ends as soon as PostgreSQL reports the lock waits.
LOCK_WAIT_GUARD_S = 30.0


def lock_waiters(engine: Engine) -> int:
    """How many sessions of this database are waiting on a lock right now."""
    with engine.connect() as connection:
        return int(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one())


def await_lock_waiters(engine: Engine, count: int, gave_up: Callable[[], str | None] = lambda: None) -> None:
    """Return once ``count`` sessions wait on a lock; fail with ``gave_up()``'s text if it says one ended early."""
    guard = time.monotonic() + LOCK_WAIT_GUARD_S
    while lock_waiters(engine) < count:
        early = gave_up()
        assert early is None, early
        assert time.monotonic() < guard, f"fewer than {count} sessions ever waited on the lock"
        time.sleep(0.02)  # polling the catalogue, not timing the outcome


@contextmanager
def unique_violations(engine: Engine) -> Iterator[list[str]]:
    """The constraint names of the unique violations ``engine``'s connections hit inside the block."""
    seen: list[str] = []

    def record(context: ExceptionContext) -> None:
        if getattr(context.original_exception, "sqlstate", None) == UNIQUE_VIOLATION:
            diag = getattr(context.original_exception, "diag", None)
            seen.append(str(getattr(diag, "constraint_name", "")))

    event.listen(engine, "handle_error", record)
    try:
        yield seen
    finally:
        event.remove(engine, "handle_error", record)

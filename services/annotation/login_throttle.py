"""Web-UI login rate limiting per username and per client address, shared through the database.

Why the database: the annotation service runs as several replicas, and an in-memory counter
would give an attacker N tries per replica (or a fresh count after each restart).

How an attempt is counted. ``begin`` writes one row per subject (the typed username and the
client address) and commits it *before* the password is checked, then counts the other rows of
each subject in the window. So a burst of parallel guesses cannot all pass a "count < N" check
before any of them is recorded: every request sees at least the rows committed before it. If a
subject already has its N failures, the attempt is refused without checking the password (a
correct password too) and its rows are removed again, so refused attempts do not extend the
lock: it ends ``window`` after the failure that filled it (``Retry-After``). ``finish`` removes
the rows of an attempt that turned out not to be a failure: a correct password clears the
account's failures, and takes back this attempt's address row (an address's count is never
reset by a success, or one valid account would let its holder guess other accounts' passwords
without limit).

Usernames that do not exist count like those that do, so the lock-out itself does not tell
whether an account exists. Subjects are stored as HMACs under ``secret_key``: a password typed
into the username box never lands in the database, and the table reveals neither usernames nor
addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.annotation.models import LoginAttempt
from services.common.db import session_scope, utcnow
from services.common.settings import get_settings

ACCOUNT = "account"
ADDRESS = "address"


@dataclass(frozen=True)
class Attempt:
    """One login attempt in progress: its rows, and how long to wait if it was refused."""

    row_ids: tuple[str, ...]
    account_subject: str | None
    retry_after_s: int = 0

    @property
    def refused(self) -> bool:
        return self.retry_after_s > 0


def subject_of(scope: str, value: str) -> str:
    """The stored form of a username or address: an HMAC, so the table reveals neither."""
    key = get_settings().secret_key.encode()
    return hmac.new(key, f"{scope}:{value}".encode(), hashlib.sha256).hexdigest()


def _limits() -> dict[str, int]:
    settings = get_settings()
    return {ACCOUNT: settings.login_max_failures_per_account, ADDRESS: settings.login_max_failures_per_address}


def _window() -> timedelta:
    return timedelta(seconds=get_settings().login_window_s)


def _wait_s(session: Session, scope: str, subject: str, own_id: str, now: datetime) -> float:
    """Seconds until ``subject`` has fewer than its limit of failures in the window (0: not locked)."""
    limit = _limits()[scope]
    window = _window()
    times = list(session.scalars(
        select(LoginAttempt.attempted_at)
        .where(LoginAttempt.scope == scope, LoginAttempt.subject == subject, LoginAttempt.id != own_id,
               LoginAttempt.attempted_at > now - window)
        .order_by(LoginAttempt.attempted_at.desc()).limit(max(limit, 1))))
    if limit <= 0 or len(times) < limit:
        return 0.0
    # The lock lifts when the limit-th most recent failure leaves the window.
    return max((times[limit - 1] + window - now).total_seconds(), 1.0)


def begin(username: str | None, address: str, *, now: datetime | None = None) -> Attempt:
    """Record an attempt (before the password is checked) and say whether it may go ahead."""
    now = now or utcnow()
    subjects = [(ADDRESS, subject_of(ADDRESS, address))]
    account = subject_of(ACCOUNT, username.strip().casefold()) if username else None
    if account is not None:
        subjects.append((ACCOUNT, account))
    with session_scope() as session:
        session.execute(delete(LoginAttempt).where(LoginAttempt.attempted_at <= now - _window()))
        rows = [LoginAttempt(scope=scope, subject=subject, attempted_at=now) for scope, subject in subjects]
        session.add_all(rows)
        session.flush()
        ids = tuple(row.id for row in rows)
    with session_scope() as session:
        wait = max(_wait_s(session, scope, subject, own_id, now)
                   for (scope, subject), own_id in zip(subjects, ids, strict=True))
    if wait > 0:
        _forget(ids)
        return Attempt((), account, retry_after_s=math.ceil(wait))
    return Attempt(ids, account)


def finish(attempt: Attempt, *, succeeded: bool) -> None:
    """A failure keeps its rows; a success clears the account's failures and its own address row."""
    if not succeeded or attempt.refused:
        return
    with session_scope() as session:
        session.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(attempt.row_ids)))
        if attempt.account_subject is not None:
            session.execute(delete(LoginAttempt).where(LoginAttempt.scope == ACCOUNT,
                                                       LoginAttempt.subject == attempt.account_subject))


def _forget(ids: tuple[str, ...]) -> None:
    with session_scope() as session:
        session.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))


def failures(scope: str, value: str, *, now: datetime | None = None) -> int:
    """How many failures count against a username or address now (tests, operators)."""
    now = now or utcnow()
    normalised = value.strip().casefold() if scope == ACCOUNT else value
    with session_scope() as session:
        return len(list(session.scalars(select(LoginAttempt.id).where(
            LoginAttempt.scope == scope, LoginAttempt.subject == subject_of(scope, normalised),
            LoginAttempt.attempted_at > now - _window()))))

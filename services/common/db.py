"""SQLAlchemy 2.0 engine, sessions and the declarative base shared by every service."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends
from sqlalchemy import Connection, DateTime, Dialect, Engine, MetaData, create_engine, event, make_url
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeDecorator
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import Settings, get_settings

# Stable constraint names keep Alembic migrations identical on SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin_before_savepoint(connection: Connection, _name: str | None) -> None:
    """Open the real transaction before a SAVEPOINT that would otherwise start one.

    pysqlite (legacy transaction control) emits its implicit BEGIN only before INSERT, UPDATE, DELETE
    or REPLACE. When a transaction's first write sits in ``session.begin_nested()``, the SAVEPOINT
    itself starts SQLite's transaction and its RELEASE commits it: the savepoint's rows outlive a
    rollback of the enclosing transaction (an idempotency claim stayed "pending" after the request's
    work was rolled back). A BEGIN first makes the SAVEPOINT nested, as on PostgreSQL.
    """
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is not None and not dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    """Create an engine for SQLite (embedded default) or Postgres through psycopg 3."""
    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _sqlite_begin_before_savepoint)
        return engine
    return create_engine(url, pool_pre_ping=True, **postgres_pool_args(get_settings()))


def postgres_pool_args(settings: Settings) -> dict[str, Any]:
    """The PostgreSQL engine's pool: ``db_pool_size + db_max_overflow`` connections at most per process.

    Behind PgBouncer in transaction mode (``db_pgbouncer``) the bouncer pools: no client pool, and no
    server-side prepared statements, which live on a server connection the next transaction may not
    get. rewardhub takes row locks (``FOR UPDATE``) inside transactions and no advisory or session
    locks, so transaction pooling keeps its locking intact.
    """
    if settings.db_pgbouncer:
        return {"poolclass": NullPool, "connect_args": {"prepare_threshold": None}}
    return {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_s}


_ENGINES: dict[str, Engine] = {}
_SESSIONMAKERS: dict[str, sessionmaker[Session]] = {}


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _chmod(path: Path, mode: int) -> None:
    """An explicit chmod (a umask cannot widen it); a path we do not own only gets a warning."""
    try:
        os.chmod(path, mode)
    except OSError as exc:
        logging.getLogger("rewardhub.db").warning("cannot make %s owner-only: %s", path, exc)


def prepare_sqlite_storage(url: str, data_dir: Path | None = None) -> None:
    """Owner-only data: the data dir 0700, the SQLite file and its -wal/-shm/-journal 0600.

    The database holds password hashes, webhook secrets and labels, and sandboxed code runs as
    another local user on the same machine, so default modes (0755/0644) would let it read them.
    The file is created ahead with ``os.open(..., 0o600)`` so it never exists with wider modes;
    SQLite gives its side files the main file's mode. Existing files are tightened too.
    """
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        _chmod(data_dir, PRIVATE_DIR_MODE)
    database = make_url(url).database
    if not url.startswith("sqlite") or not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
        _chmod(path.parent, PRIVATE_DIR_MODE)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        if candidate.exists():
            _chmod(candidate, PRIVATE_FILE_MODE)


def get_engine() -> Engine:
    settings = get_settings()
    url = settings.effective_database_url
    if url not in _ENGINES:
        if settings.is_sqlite:
            prepare_sqlite_storage(url, settings.data_dir)
        _ENGINES[url] = make_engine(url)
    return _ENGINES[url]


def session_factory() -> sessionmaker[Session]:
    url = get_settings().effective_database_url
    if url not in _SESSIONMAKERS:
        _SESSIONMAKERS[url] = sessionmaker(bind=get_engine(), expire_on_commit=False)
    return _SESSIONMAKERS[url]


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (CLI, tasks)."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# ------------------------------------------------------------------------------- unit of work
#
# Current FastAPI runs the teardown of a (request-scoped) yield dependency after the response has
# been sent, so a commit there races the client's next request and can fail after a 2xx went out.
# The unit of work closes that gap: ``get_session`` registers each request session on the request's
# ``UnitOfWork`` and ``UnitOfWorkMiddleware`` (installed by ``create_service_app`` on every service)
# commits it when the endpoint has returned and before the response starts. A failed commit turns
# into a 503 with ``Retry-After``; nothing of the request is stored and no 2xx is sent. So does a
# request that could not reach the database at all (a restart or failover under way): a 503
# ``database_unavailable`` the client retries, not a 500. Streaming
# routes get what they wrote before the stream committed before the first byte.

UNIT_OF_WORK_SCOPE_KEY = "rewardhub.unit_of_work"
COMMIT_FAILED_RETRY_AFTER_S = 1

log = logging.getLogger("rewardhub.db")


class CommitFailed(Exception):
    """The request's writes could not be committed; nothing was stored."""


class _Entry:
    __slots__ = ("failed", "open", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.open = True  # until the dependency's teardown closes it (an exception there rolls back)
        self.failed = False


class UnitOfWork:
    """The sessions one HTTP request opened through ``get_session``."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()

    def register(self, session: Session) -> _Entry:
        entry = _Entry(session)
        with self._lock:
            self._entries.append(entry)
        return entry

    def has_work(self) -> bool:
        with self._lock:
            return any(entry.open and not entry.failed for entry in self._entries)

    def commit(self) -> None:
        """Commit every open session (runs in a worker thread); roll all back and raise on failure."""
        with self._lock:
            entries = [entry for entry in self._entries if entry.open and not entry.failed]
        try:
            for entry in entries:
                entry.session.commit()
        except BaseException as exc:
            for entry in entries:
                entry.failed = True
                try:
                    entry.session.rollback()
                except Exception:  # the connection may be gone; close() discards it
                    log.debug("rollback after a failed commit failed too", exc_info=True)
            raise CommitFailed(f"{type(exc).__name__}: {exc}") from exc


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, committed before the response is sent.

    Under ``UnitOfWorkMiddleware`` the commit happens when the endpoint returns and before the
    response starts; this teardown (after the response) then only commits what a streaming body
    wrote later, and closes. Without the middleware (an app not built by ``create_service_app``)
    it falls back to committing here. An exception from the endpoint rolls everything back.
    """
    session = session_factory()()
    unit = request.scope.get(UNIT_OF_WORK_SCOPE_KEY)
    entry = unit.register(session) if isinstance(unit, UnitOfWork) else None
    try:
        yield session
        if entry is None or not entry.failed:
            session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        if entry is not None:
            entry.open = False
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
"""The request's session as a route parameter (``session: SessionDep``), committed before the response."""


class _ResponseReplaced(Exception):
    """Stops the original response after a failed commit replaced it with a 503."""


# The driver or pool could not reach the database (a restart, a failover, an exhausted pool): the
# request may well succeed a moment later, so the client is told to retry, never given a 500.
_UNREACHABLE = (sqlalchemy_exc.OperationalError, sqlalchemy_exc.InterfaceError, sqlalchemy_exc.DisconnectionError,
                sqlalchemy_exc.TimeoutError)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database could not be reached or dropped the connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNREACHABLE):
            return True
        if isinstance(current, sqlalchemy_exc.DBAPIError) and current.connection_invalidated:
            return True
        if type(current).__module__.startswith("psycopg") and type(current).__name__ == "OperationalError":
            return True
        current = current.__cause__ or current.__context__
    return False


class UnitOfWorkMiddleware:
    """Commit the request's sessions after the endpoint returns and before the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        unit = UnitOfWork()
        scope[UNIT_OF_WORK_SCOPE_KEY] = unit
        replaced = started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                raise _ResponseReplaced
            if message["type"] == "http.response.start" and unit.has_work():
                try:
                    await anyio.to_thread.run_sync(unit.commit)
                except CommitFailed as exc:
                    log.error("commit failed on %s %s; answering 503: %s", scope.get("method"),
                              scope.get("path"), exc)
                    replaced = True
                    await _send_commit_failed(send)
                    return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            with suppress(_ResponseReplaced):
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Raised past the error handlers (they leave driver errors to the catch-all 500): when the
            # database was unreachable and nothing was sent yet, the honest answer is "retry shortly".
            if started or replaced or not database_unreachable(exc):
                raise
            log.error("database unreachable on %s %s; answering 503: %s: %s", scope.get("method"), scope.get("path"),
                      type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            await _send_unavailable(send, "database_unavailable", "the database is unreachable right now; nothing "
                                    "was saved, retry the request shortly", "database")


async def _send_commit_failed(send: Send) -> None:
    await _send_unavailable(send, "commit_failed",
                            "the database did not store this request's changes; nothing was saved, retry it", None)


async def _send_unavailable(send: Send, code: str, message: str, field: str | None) -> None:
    """A 503 with ``Retry-After`` in the common error shape."""
    body = json.dumps({"error": {"code": code, "field": field, "message": message}}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(COMMIT_FAILED_RETRY_AFTER_S).encode())]})
    await send({"type": "http.response.body", "body": body})


def dispose_engines() -> None:
    """Close every pooled connection (tests switch databases; forked workers must not share sockets)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _SESSIONMAKERS.clear()

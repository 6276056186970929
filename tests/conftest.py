"""Shared fixtures: isolated settings, real PostgreSQL and Redis, a migrated gateway with keys.

Tests that need PostgreSQL or Redis, a dev dependency or a kernel capability skip with the reason
where it is missing; with ``REWARDHUB_REQUIRE_SERVICES=1`` (CI) every skip is a failure instead, except
for the tests marked ``gpu``, which skip without a CUDA device. ``require`` and ``require_module`` say
what is missing; the hooks at the end turn any other skip (a bare ``pytest.skip``, ``importorskip``,
``skipif``) into a failure under CI, so nothing vanishes from the suite silently.

``live_server`` (and every test that asks for ``database``) runs twice, ids ``sqlite`` and
``postgres`` (marked ``postgres``): the embedded default and a fresh PostgreSQL database, as in
production. A test that only reads through the server narrows it with ``@SQLITE_ONLY``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

POSTGRES_ADMIN_URL = os.environ.get("REWARDHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("REWARDHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("REWARDHUB_REQUIRE_SERVICES", "") not in ("", "0", "false")
REPO_ROOT = Path(__file__).resolve().parents[1]


# Our own top-level packages: a broken import of one of them is a bug, never a reason to skip.
PROJECT_PACKAGES = frozenset({"rewardhub", "services", "trainer", "webui", "migrations", "tests", "benchmarks"})
REQUIRED_BY_CI = "REWARDHUB_REQUIRE_SERVICES=1 makes this a failure"


def require(ok: bool, reason: str) -> None:
    """Skip with ``reason`` where a prerequisite is missing; fail instead under REWARDHUB_REQUIRE_SERVICES=1."""
    if ok:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; {REQUIRED_BY_CI}", pytrace=False)
    pytest.skip(f"{reason}; set REWARDHUB_REQUIRE_SERVICES=1 to fail instead")


def require_module(name: str, why: str = "a dev dependency") -> ModuleType:
    """Import ``name`` or skip saying so (fail under CI); the project's own modules always fail."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if name.partition(".")[0] in PROJECT_PACKAGES:
            raise  # a project module that does not import is broken: never a skip
        missing = f"{name} is not importable ({type(exc).__name__}: {exc})"
    require(False, f"{missing}; it is {why} (`make install-dev` installs it)")
    raise AssertionError("unreachable: require(False, ...) skips or fails")


def unavailable(what: str, why: str) -> None:
    require(False, f"{what} is not reachable ({why})")


def _reset_state() -> None:
    from services.common.db import dispose_engines
    from services.common.service_client import unregister_local_apps
    from services.common.settings import reset_settings_cache

    dispose_engines()
    reset_settings_cache()
    unregister_local_apps()


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings pointing at a private data dir (SQLite) with no broker and no service URLs."""
    for name in list(os.environ):
        if name.startswith("REWARDHUB_") and name not in ("REWARDHUB_REQUIRE_SERVICES",) \
                and not name.startswith("REWARDHUB_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REWARDHUB_DATA_DIR", str(tmp_path / "data"))
    _reset_state()
    yield tmp_path
    _reset_state()


def _sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server, or skip/fail."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", f"{type(exc).__name__}: {exc}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, dropped after the test."""
    name = _create_database(postgres_server)
    yield _database_url(postgres_server, name)
    _drop_database(postgres_server, name)


def _create_database(admin_url: str, template: str | None = None) -> str:
    import psycopg
    from psycopg import sql

    name = f"rewardhub_test_{uuid.uuid4().hex[:12]}"
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)
    return name


def _drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    from services.common.db import dispose_engines

    dispose_engines()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return _sqlalchemy_url(f"{base}/{name}")


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> Iterator[str]:
    """A database migrated to head once per session, that :func:`migrated_postgres_url` copies.

    Nothing connects to it after the migration (``CREATE DATABASE … TEMPLATE`` needs that).
    """
    from services.common.migrate import upgrade

    name = _create_database(postgres_server)
    try:
        upgrade(_database_url(postgres_server, name))
        yield name
    finally:
        _drop_database(postgres_server, name)


@pytest.fixture
def migrated_postgres_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the migrations' head (a copy of the session's template: the
    same as migrating it, in a fraction of the time), dropped after the test."""
    name = _create_database(postgres_server, template=postgres_template)
    yield _database_url(postgres_server, name)
    _drop_database(postgres_server, name)


_SQLITE_TEMPLATE: list[Path] = []


def _sqlite_template() -> Path:
    """A SQLite file migrated to head once per test process (removed at exit)."""
    if not _SQLITE_TEMPLATE:
        import atexit
        import shutil
        import tempfile

        from services.common.migrate import upgrade

        folder = Path(tempfile.mkdtemp(prefix="rewardhub-sqlite-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        upgrade(f"sqlite:///{folder / 'template.db'}")
        _SQLITE_TEMPLATE.append(folder / "template.db")
    return _SQLITE_TEMPLATE[0]


def migrate_to_head() -> None:
    """What ``services.common.migrate.upgrade()`` does to the configured database, faster where it can.

    A SQLite file that does not exist yet starts as a copy of one migrated earlier in the session:
    migrating anew took most of many tests' time (each DDL statement commits, and syncs, on its own).
    Any other database (an existing file, PostgreSQL) is migrated for real. The migrations themselves
    are tested step by step in tests/integration/test_migrations.py.
    """
    import shutil

    from sqlalchemy import make_url

    from services.common.db import prepare_sqlite_storage
    from services.common.migrate import upgrade
    from services.common.settings import get_settings

    settings = get_settings()
    url = settings.effective_database_url
    target = make_url(url).database if url.startswith("sqlite") else None
    if not target or target == ":memory:" or target.startswith("file:") or Path(target).exists():
        upgrade()
        return
    prepare_sqlite_storage(url, settings.data_dir)  # the file created owner-only, as upgrade() would
    shutil.copyfile(_sqlite_template(), target)  # into the existing file: its 0600 mode is kept


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[str]:
    """The real Redis database at ``url``, flushed before and after (skip/fail when unreachable)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        unavailable(f"Redis at {url}", f"{type(exc).__name__}: {exc}")
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis database (flushed before and after the test)."""
    with flushed_redis(REDIS_TEST_URL) as url:
        yield url


@dataclass
class Tenant:
    """A migrated database with two projects and a key of every role on project A."""

    project_a: str
    project_b: str
    keys: dict[str, str]


def make_tenant() -> Tenant:
    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.models import Project, Role

    migrate_to_head()
    with session_scope() as session:
        a, b = Project(name="project-a"), Project(name="project-b")
        session.add_all([a, b])
        session.flush()
        keys = {"root": create_api_key(session, role=Role.admin, all_projects=True)[1]}
        for role in Role:
            keys[role.value] = create_api_key(session, role=role, projects=[a])[1]
        keys["admin_b"] = create_api_key(session, role=Role.admin, projects=[b])[1]
        return Tenant(project_a=a.id, project_b=b.id, keys=keys)


@pytest.fixture
def sqlite_tenant(isolated_env: Path) -> Tenant:
    return make_tenant()


@pytest.fixture
def postgres_tenant(isolated_env: Path, migrated_postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Tenant:
    monkeypatch.setenv("DATABASE_URL", migrated_postgres_url)
    _reset_state()
    return make_tenant()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class LiveServer:
    url: str
    tenant: Tenant


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DATABASE_BACKENDS = ("sqlite", "postgres")
# For a test that only reads through the server (grades, validates): one backend keeps the suite's time.
SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The database a test's server runs on: ``sqlite`` (the embedded default) or ``postgres`` (as in production).

    Every test that uses it runs on both (``pytest_generate_tests``). ``postgres`` is a fresh database
    on the real server, already at the migrations' head (``migrated_postgres_url``): it skips with the reason where none is reachable and fails
    under REWARDHUB_REQUIRE_SERVICES=1. A test that only reads narrows it with ``@SQLITE_ONLY``.
    """
    backend = str(getattr(request, "param", "sqlite"))  # asked for dynamically: the embedded default
    if backend not in DATABASE_BACKENDS:
        raise ValueError(f"database: {backend!r} is not one of {', '.join(DATABASE_BACKENDS)}")
    if backend == "postgres":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("migrated_postgres_url"))
        _reset_state()
    return backend


@pytest.fixture
def live_server(isolated_env: Path, database: str) -> Iterator[LiveServer]:
    """The embedded default served by a real uvicorn on a loopback port, on each ``database`` backend."""
    import threading
    import time

    import httpx
    import uvicorn

    from rewardhub.embedded import build_embedded_app

    tenant = make_tenant()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_embedded_app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        raise RuntimeError("live server did not start")
    yield LiveServer(url=url, tenant=tenant)
    server.should_exit = True
    thread.join(timeout=10)


# --- skips are failures under CI -----------------------------------------------------------------

GPU_MARKER = "gpu: needs a CUDA device; skips without one, even under REWARDHUB_REQUIRE_SERVICES=1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", GPU_MARKER)


def _parametrizes(metafunc: pytest.Metafunc, argname: str) -> bool:
    """Whether a ``parametrize`` mark on the test (or its module or class) names ``argname``."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if argname in ([n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)):
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Both backends unless the module narrows ``database`` itself. The GPU tests exercise the
    # training path, not the database: they run on the embedded default only.
    if "database" not in metafunc.fixturenames or _parametrizes(metafunc, "database"):
        return
    gpu = metafunc.definition.get_closest_marker("gpu") is not None
    backends = [pytest.param(name, marks=[pytest.mark.postgres] if name == "postgres" else [], id=name)
                for name in (["sqlite"] if gpu else DATABASE_BACKENDS)]
    metafunc.parametrize("database", backends, indirect=True)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        no_cuda = pytest.mark.skip(reason="no CUDA device here; the GPU tests run on a GPU machine")
        for item in gpu_items:
            item.add_marker(no_cuda)


def _skip_reason(longrepr: Any) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason"); anything else is shown as it is.
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


def _as_failure(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, and {REQUIRED_BY_CI} (only tests marked gpu may skip): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is None):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A module-level importorskip or pytest.skip skips the whole file at collection time.
    report = yield
    if REQUIRE_SERVICES and report.skipped:
        _as_failure(report)
    return report

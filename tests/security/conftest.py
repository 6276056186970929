"""Fixtures of the security suite: rewardhub services as an unprivileged user, and as root.

Production runs every service as uid 10001 (Dockerfile, Helm); the suite runs as root in CI. The
attacks must fail both ways, so:

* ``nonroot_runtime`` (session): an interpreter with the project importable by the unprivileged
  account ``rewardhub-test`` (created when the tests are root; otherwise the current user), proven
  with ``id -u`` and the services' imports as that account - see tests/security/nonroot.py;
* ``start_service(name, env=None, port=None, *, as_root=False)``: ``rewardhub serve NAME`` as that
  account (or root), healthy, stopped (its whole process group) at teardown; ``start_nonroot_service``
  and ``start_root_service`` fix ``as_root``; ``start_service_as`` follows the parametrized
  ``service_user`` ("nonroot", "root"), so a test using it runs both ways;
* ``service_database``: SQLite in a data dir owned by the services' uid, or a fresh PostgreSQL
  database (``REWARDHUB_TEST_SECURITY_DB=postgres``, or ``indirect`` parametrization with
  "sqlite"/"postgres"); ``service_tenant``: it migrated, with tests.conftest's two projects and a key
  of every role, made as the services' uid.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require
from tests.security.nonroot import (
    NonrootRuntime,
    NonrootSetupError,
    Service,
    ServiceDatabase,
    ServiceFactory,
    bootstrap_tenant,
    build_runtime,
    cleanup_runtime,
    postgres_database,
    sqlite_database,
)
from tests.security.nonroot import (
    start_service as _start_service,
)

DATABASE_KINDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def nonroot_runtime() -> Iterator[NonrootRuntime]:
    require(sys.platform.startswith("linux"), "the non-root runtime needs Linux (/proc, setuid)")
    try:
        runtime = build_runtime()
    except NonrootSetupError as exc:
        pytest.fail(f"cannot run the services as an unprivileged user: {exc}", pytrace=False)
    yield runtime
    cleanup_runtime(runtime)


@pytest.fixture
def start_service(nonroot_runtime: NonrootRuntime) -> Iterator[ServiceFactory]:
    """``start_service(name, env=None, port=None, *, as_root=False, ready_path="/healthz", ...) -> Service``."""
    started: list[Service] = []

    def start(name: str, env: dict[str, str] | None = None, port: int | None = None, *, as_root: bool = False,
              **options: Any) -> Service:
        if as_root:
            require(nonroot_runtime.tests_are_root, "running a service as root needs the tests to run as root")
        service = _start_service(nonroot_runtime, name, env, port, as_root=as_root, **options)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()


@pytest.fixture
def start_nonroot_service(start_service: ServiceFactory) -> ServiceFactory:
    return functools.partial(start_service, as_root=False)


@pytest.fixture
def start_root_service(start_service: ServiceFactory) -> ServiceFactory:
    return functools.partial(start_service, as_root=True)


@pytest.fixture(params=["nonroot", "root"])
def service_user(request: pytest.FixtureRequest) -> str:
    """Who the services run as; a test using it (or ``start_service_as``) runs once per value."""
    if request.param == "root":
        require(os.geteuid() == 0, "running the services as root needs the tests to run as root")
    return str(request.param)


@pytest.fixture
def start_service_as(service_user: str, start_service: ServiceFactory) -> ServiceFactory:
    return functools.partial(start_service, as_root=service_user == "root")


def _services_as_root(request: pytest.FixtureRequest) -> bool:
    return "service_user" in request.fixturenames and request.getfixturevalue("service_user") == "root"


@pytest.fixture
def make_service_database(nonroot_runtime: NonrootRuntime,
                          request: pytest.FixtureRequest) -> Callable[..., ServiceDatabase]:
    """``make(kind=None, *, as_root=None) -> ServiceDatabase``; kind defaults to REWARDHUB_TEST_SECURITY_DB.

    A second "postgres" database in one test is the same one (tests.conftest's ``postgres_url``).
    """
    def make(kind: str | None = None, *, as_root: bool | None = None) -> ServiceDatabase:
        kind = kind or os.environ.get("REWARDHUB_TEST_SECURITY_DB", "sqlite")
        root = _services_as_root(request) if as_root is None else as_root
        if kind == "sqlite":
            return sqlite_database(nonroot_runtime, as_root=root)
        if kind == "postgres":
            return postgres_database(nonroot_runtime, request.getfixturevalue("postgres_url"), as_root=root)
        raise ValueError(f"unknown database kind {kind!r}; one of {DATABASE_KINDS}")

    return make


@pytest.fixture
def service_database(request: pytest.FixtureRequest,
                     make_service_database: Callable[..., ServiceDatabase]) -> ServiceDatabase:
    """The services' database, owned by the uid they run as (root when ``service_user`` is "root")."""
    return make_service_database(getattr(request, "param", None))


@pytest.fixture
def service_tenant(nonroot_runtime: NonrootRuntime, service_database: ServiceDatabase) -> Any:
    """``service_database`` migrated, with two projects and a key of every role (a tests.conftest.Tenant)."""
    return bootstrap_tenant(nonroot_runtime, service_database)

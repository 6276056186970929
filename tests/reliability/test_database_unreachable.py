"""An unreachable database is a retryable 503, never a 500 (found by the fault suite's PostgreSQL restarts).

In process and quick: the database is a real PostgreSQL URL on a loopback port nothing listens on, so
psycopg raises the same ``OperationalError`` a restarting server gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.common.app_factory import create_service_app
from services.common.db import database_unreachable, get_session
from tests.reliability.conftest import free_port


@pytest.fixture
def client(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from tests.conftest import _reset_state

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
    _reset_state()
    router = APIRouter()

    @router.get("/read")
    def read(session: Session = Depends(get_session)) -> dict[str, int]:
        return {"n": int(session.execute(text("SELECT 1")).scalar() or 0)}

    @router.get("/bug")
    def bug() -> dict[str, int]:
        raise ValueError("a plain bug")

    app = create_service_app("unreachable-test", [router], title="unreachable")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    _reset_state()


def test_an_unreachable_database_is_a_503_with_retry_after(client: TestClient) -> None:
    response = client.get("/read")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == {
        "code": "database_unavailable", "field": "database",
        "message": "the database is unreachable right now; nothing was saved, retry the request shortly"}


def test_other_errors_stay_500(client: TestClient) -> None:
    response = client.get("/bug")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"


def test_the_cause_chain_is_followed() -> None:
    from sqlalchemy.exc import OperationalError

    wrapped = RuntimeError("while claiming the idempotency key")
    wrapped.__cause__ = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    assert database_unreachable(wrapped)
    assert not database_unreachable(RuntimeError("unrelated"))

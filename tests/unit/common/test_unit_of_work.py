"""The unit of work: every service commits before the response starts; a failed commit is a 503."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from rewardhub.service_map import SERVICES, build_service_app
from services.common.app_factory import create_service_app
from services.common.db import UnitOfWorkMiddleware, get_session


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_app_commits_through_the_unit_of_work(isolated_env: Path, name: str) -> None:
    app = build_service_app(name)
    assert any(getattr(m, "cls", None) is UnitOfWorkMiddleware for m in app.user_middleware), name


def _app(commit_error: BaseException | None, calls: list[str]) -> TestClient:
    router = APIRouter()

    @router.post("/write", status_code=201)
    def write(session: Session = Depends(get_session)) -> dict[str, str]:
        session.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
        if commit_error is not None:
            def fail() -> None:
                calls.append("commit")
                raise commit_error
            session.commit = fail  # type: ignore[method-assign]
        return {"ok": "yes"}

    @router.get("/count")
    def count(session: Session = Depends(get_session)) -> dict[str, int]:
        return {"n": int(session.execute(text("SELECT count(*) FROM t")).scalar() or 0)}

    return TestClient(create_service_app("uow-test", [router], title="uow"), raise_server_exceptions=False)


def test_commit_happens_before_the_response(isolated_env: Path) -> None:
    with _app(None, []) as client:
        assert client.post("/write").status_code == 201
        assert client.get("/count").json() == {"n": 1}


def test_a_failed_commit_is_a_503_with_retry_after(isolated_env: Path) -> None:
    from sqlalchemy.exc import OperationalError

    calls: list[str] = []
    with _app(OperationalError("COMMIT", {}, Exception("connection lost")), calls) as client:
        response = client.post("/write")
        assert calls == ["commit"]
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "commit_failed"

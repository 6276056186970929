"""The sandbox app in-process (its runs are real bubblewrap sandboxes) and a helper to call it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.sandbox import runner


def require_namespaces() -> None:
    """Runs need bubblewrap and user namespaces; say exactly what is missing when they are absent."""
    from tests.conftest import require

    cap = runner.capability()
    require(cap.namespaces, f"the sandbox cannot isolate runs here: {cap.detail} (install Debian's bubblewrap)")


@pytest.fixture
def sandbox(isolated_env: Path) -> Iterator[TestClient]:
    require_namespaces()
    from services.sandbox.app import create_app

    with TestClient(create_app()) as client:
        yield client


def run_code(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/run_code", json={"language": "python", "run_timeout": 5, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def run_tests(client: TestClient, code: str, tests: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/tests", json={"code": code, "tests": tests, "timeout_s": 5, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fault"] is None, body["fault"]
    outcomes: list[dict[str, Any]] = body["tests"]
    return outcomes

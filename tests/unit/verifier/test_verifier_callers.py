"""The verifier's caller dependencies: role sets, and the caller's project scope set for the route."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.service_client import tenant_var
from services.verifier import run_code
from services.verifier.app import create_app
from tests.conftest import Tenant, bearer


def test_a_code_run_is_counted_against_the_callers_project(sqlite_tenant: Tenant,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    async def forward(_body: dict[str, Any]) -> dict[str, object]:
        seen.append(tenant_var.get())  # what the sandbox call would send as the run's project
        return {"status": "Success"}

    monkeypatch.setattr(run_code, "forward_run_code", forward)
    client = TestClient(create_app())
    ran = client.post("/run_code", json={"code": "print(1)"}, headers=bearer(sqlite_tenant.keys["trainer"]))
    assert ran.status_code == 200, ran.text
    assert seen == [sqlite_tenant.project_a]
    refused = client.post("/run_code", json={"code": "print(1)"}, headers=bearer(sqlite_tenant.keys["annotator"]))
    assert refused.status_code == 403 and seen == [sqlite_tenant.project_a]

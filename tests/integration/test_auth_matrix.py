"""Each role × each gateway endpoint on a real PostgreSQL, plus cross-tenant reads → 404."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.conftest import Tenant, bearer

pytestmark = pytest.mark.postgres

CALLERS = ["anonymous", "root", "admin", "trainer", "annotator", "admin_b"]

Request = Callable[[Tenant], tuple[str, str, dict | None]]


def _new_project(_t: Tenant) -> tuple[str, str, dict | None]:
    return "POST", "/v1/projects", {"name": f"p-{uuid.uuid4().hex[:8]}"}


# endpoint -> (request builder, expected status per caller)
MATRIX: dict[str, tuple[Request, dict[str, int]]] = {
    "GET /v1/me": (lambda t: ("GET", "/v1/me", None),
                   {"anonymous": 401, "root": 200, "admin": 200, "trainer": 200, "annotator": 200, "admin_b": 200}),
    "POST /v1/projects": (_new_project,
                          {"anonymous": 401, "root": 201, "admin": 201, "trainer": 403, "annotator": 403,
                           "admin_b": 201}),
    "GET /v1/projects": (lambda t: ("GET", "/v1/projects", None),
                         {"anonymous": 401, "root": 200, "admin": 200, "trainer": 200, "annotator": 200,
                          "admin_b": 200}),
    "GET /v1/projects/{A}": (lambda t: ("GET", f"/v1/projects/{t.project_a}", None),
                             {"anonymous": 401, "root": 200, "admin": 200, "trainer": 200, "annotator": 200,
                              "admin_b": 404}),
    "GET /v1/projects/{B}": (lambda t: ("GET", f"/v1/projects/{t.project_b}", None),
                             {"anonymous": 401, "root": 200, "admin": 404, "trainer": 404, "annotator": 404,
                              "admin_b": 200}),
    "POST /v1/projects/{A}/keys": (lambda t: ("POST", f"/v1/projects/{t.project_a}/keys", {"role": "annotator"}),
                                   {"anonymous": 401, "root": 201, "admin": 201, "trainer": 403,
                                    "annotator": 403, "admin_b": 404}),
    "GET /v1/projects/{A}/keys": (lambda t: ("GET", f"/v1/projects/{t.project_a}/keys", None),
                                  {"anonymous": 401, "root": 200, "admin": 200, "trainer": 403,
                                   "annotator": 403, "admin_b": 404}),
    "GET /v1/projects/{B}/keys": (lambda t: ("GET", f"/v1/projects/{t.project_b}/keys", None),
                                  {"anonymous": 401, "root": 200, "admin": 404, "trainer": 403,
                                   "annotator": 403, "admin_b": 200}),
}


@pytest.fixture
def client(postgres_tenant: Tenant) -> TestClient:
    return TestClient(create_app())


def _headers(tenant: Tenant, caller: str) -> dict[str, str]:
    return {} if caller == "anonymous" else bearer(tenant.keys[caller])


@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_role_matrix(endpoint: str, client: TestClient, postgres_tenant: Tenant) -> None:
    build, expected = MATRIX[endpoint]
    assert set(expected) == set(CALLERS)
    seen = {}
    for caller in CALLERS:
        method, path, body = build(postgres_tenant)
        response = client.request(method, path, json=body, headers=_headers(postgres_tenant, caller))
        seen[caller] = response.status_code
        if response.status_code >= 400:
            assert set(response.json()["error"]) >= {"code", "message", "field"}
    assert seen == expected


def test_listing_is_scoped_to_the_keys_projects(client: TestClient, postgres_tenant: Tenant) -> None:
    trainer = client.get("/v1/projects", headers=bearer(postgres_tenant.keys["trainer"])).json()["data"]
    assert [p["id"] for p in trainer] == [postgres_tenant.project_a]
    root = {p["id"] for p in client.get("/v1/projects", headers=bearer(postgres_tenant.keys["root"])).json()["data"]}
    assert {postgres_tenant.project_a, postgres_tenant.project_b} <= root


def test_revoking_keys_respects_tenancy(client: TestClient, postgres_tenant: Tenant) -> None:
    admin = bearer(postgres_tenant.keys["admin"])
    created = client.post(f"/v1/projects/{postgres_tenant.project_a}/keys", json={"role": "trainer"},
                          headers=admin).json()
    assert client.delete(f"/v1/keys/{created['id']}", headers=bearer(postgres_tenant.keys["trainer"])).status_code == 403
    assert client.delete(f"/v1/keys/{created['id']}", headers=bearer(postgres_tenant.keys["admin_b"])).status_code == 404
    assert client.delete(f"/v1/keys/{created['id']}", headers=admin).status_code == 200
    assert client.get("/v1/me", headers=bearer(created["key"])).status_code == 401
    root_key_id = client.get("/v1/me", headers=bearer(postgres_tenant.keys["root"])).json()["key_id"]
    # A project admin cannot revoke the all-projects key.
    assert client.delete(f"/v1/keys/{root_key_id}", headers=admin).status_code == 404

"""Projects and keys through the gateway API on the embedded default (SQLite)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.conftest import Tenant, bearer


def test_admin_creates_project_and_keys_shown_once(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    admin = bearer(sqlite_tenant.keys["admin"])
    created = client.post("/v1/projects", json={"name": "  math-rl  "}, headers=admin)
    assert created.status_code == 201
    project = created.json()
    assert project["name"] == "math-rl"
    # The creating admin (scoped to project A only) now manages the new project too.
    assert project["id"] in client.get("/v1/me", headers=admin).json()["project_ids"]

    issued = client.post(f"/v1/projects/{project['id']}/keys", json={"role": "trainer", "name": "ci"},
                         headers=admin)
    assert issued.status_code == 201
    key = issued.json()
    assert key["key"].startswith("rh_") and key["prefix"] == key["key"][:10]
    listed = client.get(f"/v1/projects/{project['id']}/keys", headers=admin).json()
    me = client.get("/v1/me", headers=admin).json()
    assert {k["id"] for k in listed["data"]} == {key["id"], me["key_id"]} and listed["next_cursor"] is None
    assert all("key" not in k for k in listed["data"])
    assert client.get("/v1/projects", headers=bearer(key["key"])).json()["data"][0]["id"] == project["id"]

    revoked = client.delete(f"/v1/keys/{key['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/projects", headers=bearer(key["key"])).status_code == 401


def test_duplicate_project_name_is_conflict(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    response = client.post("/v1/projects", json={"name": "project-a"}, headers=bearer(sqlite_tenant.keys["root"]))
    assert response.status_code == 409
    assert response.json()["error"]["field"] == "name"


def test_bad_input_names_the_field(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    root = bearer(sqlite_tenant.keys["root"])
    blank = client.post("/v1/projects", json={"name": "   "}, headers=root).json()["error"]
    assert blank["field"] == "name" and "blank" in blank["message"]
    unknown = client.post("/v1/projects", json={"name": "x", "colour": "red"}, headers=root).json()["error"]
    assert unknown["field"] == "colour"
    role = client.post(f"/v1/projects/{sqlite_tenant.project_a}/keys", json={"role": "owner"},
                       headers=root).json()["error"]
    assert role["field"] == "role"


def test_missing_and_malformed_authorization(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "},
                    {"Authorization": "Bearer rh_not-a-key"}):
        response = client.get("/v1/projects", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["field"] == "Authorization"
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_projects_and_keys_are_listed_a_page_at_a_time(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    root = bearer(sqlite_tenant.keys["root"])
    for name in ("p-one", "p-two", "p-three"):
        assert client.post("/v1/projects", json={"name": name}, headers=root).status_code == 201
    everything = client.get("/v1/projects", headers=root).json()
    assert everything["next_cursor"] is None
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/projects", params=params, headers=root).json()
        assert len(page["data"]) <= 2
        seen += [p["id"] for p in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [p["id"] for p in everything["data"]] and len(seen) == len(set(seen)) >= 5

    keys_url = f"/v1/projects/{sqlite_tenant.project_a}/keys"
    first = client.get(keys_url, params={"limit": 1}, headers=root).json()
    rest = client.get(keys_url, params={"limit": 500, "cursor": first["next_cursor"]}, headers=root).json()
    every_key = client.get(keys_url, headers=root).json()["data"]
    assert [k["id"] for k in first["data"] + rest["data"]] == [k["id"] for k in every_key]


def test_bad_page_parameters_name_the_field(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    root = bearer(sqlite_tenant.keys["root"])
    for params, field in (({"cursor": "not-a-cursor"}, "cursor"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit")):
        response = client.get("/v1/projects", params=params, headers=root)
        assert response.status_code == 422
        assert response.json()["error"]["field"] == field

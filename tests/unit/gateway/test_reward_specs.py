"""Versioned reward specs: name@version, latest by name, immutability, validation."""

from __future__ import annotations

from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.conftest import Tenant, bearer


def test_versions_increment_and_resolve(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    trainer = bearer(sqlite_tenant.keys["trainer"])
    url = f"/v1/projects/{sqlite_tenant.project_a}/reward-specs"
    first = client.post(url, json={"name": "gsm8k", "spec": {"type": "math"}}, headers=trainer)
    assert first.status_code == 201, first.text
    assert first.json()["ref"] == "gsm8k@1"
    second = client.post(url, json={"name": "gsm8k", "spec": {"type": "numeric", "rel_tol": 0.01}}, headers=trainer)
    assert second.json()["ref"] == "gsm8k@2"
    assert client.get(f"{url}/gsm8k", headers=trainer).json()["version"] == 2
    assert client.get(f"{url}/gsm8k@1", headers=trainer).json()["spec"]["type"] == "math"
    listed = client.get(url, headers=trainer).json()
    assert [s["ref"] for s in listed["data"]] == ["gsm8k@2"] and listed["next_cursor"] is None
    missing = client.get(f"{url}/gsm8k@9", headers=trainer)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "ref"


def test_malformed_specs_name_the_field(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    trainer = bearer(sqlite_tenant.keys["trainer"])
    url = f"/v1/projects/{sqlite_tenant.project_a}/reward-specs"
    unknown = client.post(url, json={"name": "x", "spec": {"type": "astrology"}}, headers=trainer)
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"].startswith("spec")
    bad_option = client.post(url, json={"name": "x", "spec": {"type": "numeric", "rel_tol": "lots"}}, headers=trainer)
    assert bad_option.status_code == 422
    assert "rel_tol" in bad_option.json()["error"]["field"]
    bad_name = client.post(url, json={"name": "no spaces", "spec": {"type": "math"}}, headers=trainer)
    assert bad_name.json()["error"]["field"] == "name"


def test_annotators_cannot_write_specs_and_foreign_projects_are_absent(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    body = {"name": "x", "spec": {"type": "math"}}
    annotator = client.post(f"/v1/projects/{sqlite_tenant.project_a}/reward-specs", json=body,
                            headers=bearer(sqlite_tenant.keys["annotator"]))
    assert annotator.status_code == 403
    foreign = client.post(f"/v1/projects/{sqlite_tenant.project_b}/reward-specs", json=body,
                          headers=bearer(sqlite_tenant.keys["trainer"]))
    assert foreign.status_code == 404


def test_latest_specs_are_listed_by_name_a_page_at_a_time(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    trainer = bearer(sqlite_tenant.keys["trainer"])
    url = f"/v1/projects/{sqlite_tenant.project_a}/reward-specs"
    for name in ("zeta", "alpha", "mid", "alpha"):
        assert client.post(url, json={"name": name, "spec": {"type": "math"}}, headers=trainer).status_code == 201
    first = client.get(url, params={"limit": 2}, headers=trainer).json()
    assert [s["ref"] for s in first["data"]] == ["alpha@2", "mid@1"]
    second = client.get(url, params={"limit": 2, "cursor": first["next_cursor"]}, headers=trainer).json()
    assert [s["ref"] for s in second["data"]] == ["zeta@1"] and second["next_cursor"] is None


def test_a_retried_create_with_an_idempotency_key_adds_one_version(sqlite_tenant: Tenant) -> None:
    client = TestClient(create_app())
    url = f"/v1/projects/{sqlite_tenant.project_a}/reward-specs"
    headers = bearer(sqlite_tenant.keys["trainer"]) | {"Idempotency-Key": "spec-1"}
    body = {"name": "gsm8k", "spec": {"type": "math"}}
    first = client.post(url, json=body, headers=headers)
    again = client.post(url, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert client.get(f"{url}/gsm8k", headers=headers).json()["version"] == 1
    reused = client.post(url, json={**body, "description": "other"}, headers=headers)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    without_key = client.post(url, json=body, headers=bearer(sqlite_tenant.keys["trainer"]))
    assert without_key.json()["ref"] == "gsm8k@2", "without a key every POST is a new version"

"""The review, history, my-labels and members endpoints on SQLite: roles, and bad input as a 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.annotation.app import create_app
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, buy, create, error, h, seed_step


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client

MISSING = "0" * 32


def _labelled(client: TestClient, tenant: Tenant, **fields: object) -> tuple[str, str, str]:
    """A project (k = 1) with one task labelled by the annotator key: (project id, annotation id, task id)."""
    project = create(client, tenant, label_budget=0, **fields)
    seed_step(project["id"], {"a": ["1", "1", "2", None]})
    client.patch(f"{BASE}/{project['id']}", json={"label_budget": 1}, headers=h(tenant, "admin"))
    assert buy(client, tenant, project["id"], ["a"]).status_code == 201
    lease = client.post(f"{BASE}/{project['id']}/queue/next", headers=h(tenant, "annotator")).json()
    done = client.post(f"{BASE}/{project['id']}/assignments/{lease['assignment_id']}/submit", json={"answer": "1"},
                       headers={**h(tenant, "annotator"), "Idempotency-Key": "k1"})
    assert done.status_code == 201, done.text
    return project["id"], done.json()["id"], lease["task_id"]


def test_review_input_and_roles(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid, label, task = _labelled(client, sqlite_tenant)
    url = f"{BASE}/{pid}/annotations/{label}/review"
    bad = client.post(url, json={"decision": "maybe"}, headers=h(sqlite_tenant, "admin"))
    assert bad.status_code == 422 and error(bad)["field"] == "decision"
    long = client.post(url, json={"decision": "accept", "comment": "x" * 5001}, headers=h(sqlite_tenant, "admin"))
    assert long.status_code == 422 and error(long)["field"] == "comment"
    assert client.post(url, json={"decision": "accept"}, headers=h(sqlite_tenant, "trainer")).status_code == 403
    assert client.post(url, json={"decision": "accept"}, headers=h(sqlite_tenant, "annotator")).status_code == 403
    hidden = client.post(url, json={"decision": "accept"}, headers=h(sqlite_tenant, "admin_b"))
    assert hidden.status_code == 404 and error(hidden)["field"] == "annotation_project_id"
    missing = client.post(f"{BASE}/{pid}/annotations/{MISSING}/review", json={"decision": "accept"},
                          headers=h(sqlite_tenant, "admin"))
    assert missing.status_code == 404 and error(missing)["field"] == "annotation_id"
    first = client.post(url, json={"decision": "reject", "comment": "no"}, headers=h(sqlite_tenant, "admin"))
    assert first.status_code == 201 and first.json()["label_retracted"] is True
    again = client.post(url, json={"decision": "reject"}, headers=h(sqlite_tenant, "admin"))
    assert again.status_code == 200 and again.json()["replayed"] is True and again.json()["comment"] == "no"
    history = client.get(f"{BASE}/{pid}/tasks/{task}/history", headers=h(sqlite_tenant, "admin")).json()
    assert [e["type"] for e in history["events"]] == ["label", "review"] and history["status"] == "open"
    nothing = client.get(f"{BASE}/{pid}/tasks/{MISSING}/history", headers=h(sqlite_tenant, "admin"))
    assert nothing.status_code == 404 and error(nothing)["field"] == "task_id"


def test_edit_window_setting_and_my_labels(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid, label, _ = _labelled(client, sqlite_tenant, label_edit_window_s=0)
    mine = client.get(f"{BASE}/{pid}/my-labels", headers=h(sqlite_tenant, "annotator")).json()["data"]
    assert [(m["annotation_id"], m["editable"], m["editable_until"]) for m in mine] == [(label, False, None)]
    refused = client.put(f"{BASE}/{pid}/my-labels/{label}", json={"answer": "2"}, headers=h(sqlite_tenant, "annotator"))
    assert refused.status_code == 409 and error(refused)["code"] == "not_editable"
    negative = client.patch(f"{BASE}/{pid}", json={"label_edit_window_s": -1}, headers=h(sqlite_tenant, "admin"))
    assert negative.status_code == 422 and error(negative)["field"] == "label_edit_window_s"
    opened = client.patch(f"{BASE}/{pid}", json={"label_edit_window_s": 600}, headers=h(sqlite_tenant, "admin"))
    assert opened.json()["label_edit_window_s"] == 600
    empty = client.put(f"{BASE}/{pid}/my-labels/{label}", json={"answer": "  "}, headers=h(sqlite_tenant, "annotator"))
    assert empty.status_code == 422
    edited = client.put(f"{BASE}/{pid}/my-labels/{label}", json={"answer": "2"}, headers=h(sqlite_tenant, "annotator"))
    assert edited.status_code == 200 and edited.json()["answer"] == "2" and edited.json()["task_status"] == "done"
    feed = client.get(f"{BASE}/{pid}/labels", headers=h(sqlite_tenant, "trainer")).json()["data"]
    assert [(e["event"], e["label"]) for e in feed] == [("labelled", "2")]  # re-delivered with the new value
    one = client.get(f"{BASE}/{pid}/my-labels/{label}", headers=h(sqlite_tenant, "annotator")).json()
    assert one["edits"] == 1 and one["edited_at"] is not None
    other = client.get(f"{BASE}/{pid}/my-labels/{label}", headers=h(sqlite_tenant, "admin"))
    assert other.status_code == 404 and error(other)["field"] == "annotation_id"


def test_members_input(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant)
    url = f"{BASE}/{project['id']}/members"
    assert client.post(url, json={}, headers=h(sqlite_tenant, "admin")).status_code == 422
    extra = client.post(url, json={"username": "abc", "role": "admin"}, headers=h(sqlite_tenant, "admin"))
    assert extra.status_code == 422 and error(extra)["field"] == "role"
    bad_id = client.post(url, json={"annotator_id": "nope"}, headers=h(sqlite_tenant, "admin"))
    assert bad_id.status_code == 422 and error(bad_id)["field"] == "annotator_id"
    assert client.post(url, json={"username": "abc"}, headers=h(sqlite_tenant, "trainer")).status_code == 403
    hidden = client.post(url, json={"username": "abc"}, headers=h(sqlite_tenant, "admin_b"))
    assert hidden.status_code == 404 and error(hidden)["field"] == "annotation_project_id"
    # An API key's own account is not a login account to hand around.
    client.post(f"{BASE}/{project['id']}/queue/next", headers=h(sqlite_tenant, "annotator"))
    from services.annotation.models import Annotator
    from services.common.db import session_scope

    with session_scope() as session:
        key_account = session.query(Annotator).filter(Annotator.api_key_id.is_not(None)).first()
        assert key_account is not None
        name = key_account.username
    as_key = client.post(url, json={"username": name}, headers=h(sqlite_tenant, "root"))
    assert as_key.status_code == 422 and error(as_key)["field"] == "username"
    assert client.delete(f"{url}/{MISSING}", headers=h(sqlite_tenant, "admin")).status_code == 204

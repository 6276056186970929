"""The annotation service's JSON API on SQLite: projects, answer key, purchases, labels, the queue, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.annotation import ingestion, locking
from services.annotation.app import create_app, request_time
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from services.common.settings import reset_settings_cache
from tests.conftest import Tenant, bearer

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
BASE = "/v1/annotation/projects"


class Clock:
    """The time requests act at; tests move it instead of sleeping."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(sqlite_tenant: Tenant, clock: Clock) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[request_time] = clock
    with TestClient(app) as test_client:
        yield test_client


def h(tenant: Tenant, who: str) -> dict[str, str]:
    return bearer(tenant.keys[who])


def create(client: TestClient, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"project_id": tenant.project_a, "name": "math", "label_budget": 10, "rollouts_per_prompt": 4,
            "policy": "random", **fields}
    response = client.post(BASE, json=body, headers=h(tenant, "admin"))
    assert response.status_code == 201, response.text
    return response.json()


def seed_step(project_id: str, prompts: dict[str, list[str | None]], step: int = 0) -> None:
    """Store a step's groups without running a policy (the queue tests buy explicitly)."""
    with session_scope() as session:
        project = locking.lock_project(session, project_id)
        ingestion.store_step(session, project, StepIn(step=step, groups=[
            RolloutGroupIn(prompt_id=pid, prompt_text=f"Question {pid}?", answers=answers)
            for pid, answers in prompts.items()]), T0)


def buy(client: TestClient, tenant: Tenant, project_id: str, prompt_ids: list[str], step: int = 0, **headers: str):
    return client.post(f"{BASE}/{project_id}/purchases", json={"step": step, "prompt_ids": prompt_ids},
                       headers={**h(tenant, "trainer"), **headers})


def error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


# ------------------------------------------------------------------------------------ projects


def test_admin_creates_a_project_and_roles_and_tenants_are_enforced(client: TestClient, sqlite_tenant: Tenant,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A receiver on loopback is allowed only because the operator says so (the SSRF guard).
    monkeypatch.setenv("REWARDHUB_WEBHOOK_ALLOW_PRIVATE", "true")
    reset_settings_cache()
    made = create(client, sqlite_tenant, webhook_url="http://127.0.0.1:9/hook")
    assert made["webhook_secret"].startswith("whsec_") and made["budget"] == {"total": 10, "spent": 0, "left": 10}
    # The default schema (migration 0014): today's math form as one math_answer question.
    assert made["label_schema"] == {"questions": [{
        "id": "answer", "type": "math_answer", "prompt": "The final answer", "required": True, "guidelines": "",
        "free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"}]}
    body = {"project_id": sqlite_tenant.project_a, "name": "x", "label_budget": 1}
    assert client.post(BASE, json=body, headers=h(sqlite_tenant, "trainer")).status_code == 403
    foreign = client.post(BASE, json={**body, "project_id": sqlite_tenant.project_b}, headers=h(sqlite_tenant, "admin"))
    assert foreign.status_code == 404 and error(foreign)["field"] == "project_id"
    again = client.post(BASE, json={**body, "name": "math"}, headers=h(sqlite_tenant, "admin"))
    assert again.status_code == 409 and error(again)["field"] == "name"
    schema = client.post(BASE, json={**body, "label_schema": {"free_form": False, "candidates": False}},
                         headers=h(sqlite_tenant, "admin"))
    assert schema.status_code == 422 and error(schema)["field"] == "label_schema"
    got = client.get(f"{BASE}/{made['id']}", headers=h(sqlite_tenant, "annotator"))
    assert got.status_code == 200 and "webhook_secret" not in got.json()
    hidden = client.get(f"{BASE}/{made['id']}", headers=h(sqlite_tenant, "admin_b"))
    assert hidden.status_code == 404 and error(hidden)["field"] == "annotation_project_id"
    assert client.get(BASE, headers=h(sqlite_tenant, "admin_b")).json() == {"data": [], "next_cursor": None}
    mine = client.get(BASE, params={"limit": 1}, headers=h(sqlite_tenant, "admin")).json()
    assert [p["id"] for p in mine["data"]] == [made["id"]]
    assert client.get(f"{BASE}/{made['id']}").status_code == 401


def test_budget_can_grow_but_not_drop_below_spent(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant, label_budget=2)
    seed_step(project["id"], {"a": ["1", "1", "2", None], "b": ["3", "3", "3", "3"]})
    assert buy(client, sqlite_tenant, project["id"], ["a", "b"]).status_code == 201
    low = client.patch(f"{BASE}/{project['id']}", json={"label_budget": 1}, headers=h(sqlite_tenant, "admin"))
    assert low.status_code == 409 and error(low)["field"] == "label_budget"
    up = client.patch(f"{BASE}/{project['id']}", json={"label_budget": 5}, headers=h(sqlite_tenant, "admin"))
    assert up.status_code == 200 and up.json()["budget"] == {"total": 5, "spent": 2, "left": 3}
    rotated = client.post(f"{BASE}/{project['id']}/webhook-secret", headers=h(sqlite_tenant, "admin"))
    assert rotated.json()["webhook_secret"] != project["webhook_secret"]


def test_answer_key_is_stored_but_never_shown(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant)
    entries = [{"prompt_id": "a", "answer": "SECRET-ANSWER-42"}, {"prompt_id": "b", "answer": "7"}]
    put = client.put(f"{BASE}/{project['id']}/answer-key", json={"entries": entries}, headers=h(sqlite_tenant, "admin"))
    assert put.status_code == 200 and put.json() == {"entries": 2}
    assert client.put(f"{BASE}/{project['id']}/answer-key", json={"entries": entries},
                      headers=h(sqlite_tenant, "trainer")).status_code == 403
    dup = client.put(f"{BASE}/{project['id']}/answer-key", json={"entries": [entries[0], entries[0]]},
                     headers=h(sqlite_tenant, "admin"))
    assert dup.status_code == 422 and error(dup)["field"] == "entries[1].prompt_id"
    got = client.get(f"{BASE}/{project['id']}", headers=h(sqlite_tenant, "trainer"))
    assert got.json()["answer_key_entries"] == 2 and "SECRET-ANSWER-42" not in got.text


# ----------------------------------------------------------------------------- trainer: errors


def test_step_bad_input_names_the_field(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant)
    url = f"{BASE}/{project['id']}/steps"
    cases = [
        ({"step": 0, "groups": [{"prompt_id": "a", "answers": ["1", "1", "2", "2"]}]},
         "groups[0].prompt_id", "unknown prompt"),
        ({"step": 0, "groups": [{"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"]},
                                {"prompt_id": "b", "prompt_text": "q", "answers": ["1", "1", "2"]}]},
         "groups[1].answers", "n = 4"),
        ({"step": 0, "groups": [{"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"]},
                                {"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"]}]},
         "groups[1].prompt_id", "twice"),
        ({"step": 0, "groups": [{"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"],
                                 "response_lengths": [1, 2]}]}, "groups[0].response_lengths", "n = 4"),
        ({"step": 0, "groups": [{"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"],
                                 "prompt_features": [0.1, 0.2], "rollout_features": [[0.1, 0.2]] * 3 + [[0.1]]}]},
         "groups[0].rollout_features[3]", "one width"),
        ({"step": -1, "groups": []}, "step", ""),
        ({"step": 0, "groups": [{"prompt_id": "a", "prompt_text": "q", "answers": ["1", "1", "2", "2"],
                                 "mean_token_probs": [0.5, 0.5, 0.5, 1.5]}]}, "groups[0].mean_token_probs", "[0, 1]"),
    ]
    for body, field, words in cases:
        response = client.post(url, json=body, headers=h(sqlite_tenant, "trainer"))
        assert response.status_code == 422, (field, response.text)
        assert error(response)["field"] == field and words in error(response)["message"], response.text
    assert client.post(url, json=cases[0][0], headers=h(sqlite_tenant, "annotator")).status_code == 403


def test_purchase_bad_input_and_over_budget_are_clear_4xx(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant, label_budget=2)
    seed_step(project["id"], {p: ["1", "1", "2", None] for p in "abc"})
    over = buy(client, sqlite_tenant, project["id"], ["a", "b", "c"])
    assert over.status_code == 409 and error(over)["code"] == "budget_exceeded"
    assert error(over)["field"] == "prompt_ids" and "only 2" in error(over)["message"]
    unknown = buy(client, sqlite_tenant, project["id"], ["a", "zzz"])
    assert unknown.status_code == 422 and error(unknown)["field"] == "prompt_ids[1]"
    wrong_step = buy(client, sqlite_tenant, project["id"], ["a"], step=3)
    assert wrong_step.status_code == 422 and error(wrong_step)["field"] == "prompt_ids[0]"
    assert buy(client, sqlite_tenant, project["id"], ["a"]).status_code == 201
    twice = buy(client, sqlite_tenant, project["id"], ["a"])
    assert twice.status_code == 409 and error(twice)["code"] == "already_bought"
    ledger = client.get(f"{BASE}/{project['id']}/ledger", headers=h(sqlite_tenant, "trainer")).json()
    assert ledger["budget"] == {"total": 2, "spent": 1, "left": 1}
    assert len(ledger["data"]) == 1 and ledger["next_cursor"] is None


def test_purchase_idempotency_key_replays_and_refuses_reuse(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant)
    seed_step(project["id"], {p: ["1", "1", "2", None] for p in "ab"})
    first = buy(client, sqlite_tenant, project["id"], ["a"], **{"Idempotency-Key": "k1"})
    retry = buy(client, sqlite_tenant, project["id"], ["a"], **{"Idempotency-Key": "k1"})
    assert first.status_code == 201 and retry.status_code == 201 and first.json() == retry.json()
    other = buy(client, sqlite_tenant, project["id"], ["b"], **{"Idempotency-Key": "k1"})
    assert other.status_code == 409 and error(other)["field"] == "idempotency_key"
    assert client.get(f"{BASE}/{project['id']}", headers=h(sqlite_tenant, "trainer")).json()["budget"]["spent"] == 1


# ------------------------------------------------------------------------------- annotator API


def test_annotator_flow_over_http_with_labels_feed_and_ledger(client: TestClient, sqlite_tenant: Tenant,
                                                              clock: Clock) -> None:
    project = create(client, sqlite_tenant, lease_seconds=60)
    pid = project["id"]
    seed_step(pid, {"a": ["4", "4", "5", None], "b": ["x^2", "x^{2}", "2x", "2x"]})
    assert buy(client, sqlite_tenant, pid, ["a", "b"]).status_code == 201
    who = h(sqlite_tenant, "annotator")
    lease = client.post(f"{BASE}/{pid}/queue/next", headers=who)
    assert lease.status_code == 200, lease.text
    task = lease.json()
    # Equal priority (manual purchases): first bought, first served.
    assert task["prompt_id"] == "a" and [c["count"] for c in task["candidates"]] == [2, 1]
    assert client.post(f"{BASE}/{pid}/queue/next", headers=h(sqlite_tenant, "trainer")).status_code == 403
    submit_url = f"{BASE}/{pid}/assignments/{task['assignment_id']}/submit"
    first = client.post(submit_url, json={"candidate": 0}, headers={**who, "Idempotency-Key": "s1"})
    retry = client.post(submit_url, json={"candidate": 0}, headers={**who, "Idempotency-Key": "s1"})
    assert first.status_code == 201 and retry.status_code == 200 and retry.json()["replayed"]
    assert retry.headers["idempotent-replayed"] == "true" and retry.json()["id"] == first.json()["id"]
    assert "deprecation" not in first.headers
    keyless = client.post(submit_url, json={"candidate": 0}, headers=who)
    assert keyless.status_code == 422 and error(keyless)["field"] == "Idempotency-Key"
    bad = client.post(submit_url, json={"submission_id": "s2", "answer": "4", "candidate": 0}, headers=who)
    assert bad.status_code == 422 and "exactly one" in error(bad)["message"]

    second = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
    clock.now = T0 + timedelta(seconds=61)  # the lease ran out
    stale = client.post(f"{BASE}/{pid}/assignments/{second['assignment_id']}/submit",
                        json={"submission_id": "s3", "answer": "x^2"}, headers=who)
    assert stale.status_code == 409 and error(stale)["code"] == "lease_expired"
    assert error(stale)["field"] == "assignment_id"
    again = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
    assert again["assignment_id"] == second["assignment_id"] and not again["resumed"]
    done = client.post(f"{BASE}/{pid}/assignments/{again['assignment_id']}/submit",
                       json={"submission_id": "s4", "answer": "x^2", "rationale": "expand"}, headers=who)
    assert done.status_code == 201 and done.json()["task_status"] == "done"
    assert done.headers["deprecation"] == "true"  # the body field still works, for one release
    assert client.post(f"{BASE}/{pid}/queue/next", headers=who).status_code == 204

    labels = client.get(f"{BASE}/{pid}/labels", params={"cursor": 0}, headers=h(sqlite_tenant, "trainer")).json()
    assert [(x["prompt_id"], x["label"], x["seq"]) for x in labels["data"]] == [("a", "4", 1), ("b", "x^2", 2)]
    assert labels["next_cursor"] == "2"
    assert client.get(f"{BASE}/{pid}/labels", params={"cursor": labels["next_cursor"]},
                      headers=h(sqlite_tenant, "trainer")).json() == {"data": [], "next_cursor": "2"}
    one_by_one = client.get(f"{BASE}/{pid}/labels", params={"limit": 1}, headers=h(sqlite_tenant, "trainer")).json()
    assert [x["seq"] for x in one_by_one["data"]] == [1] and one_by_one["next_cursor"] == "1"
    bad = client.get(f"{BASE}/{pid}/labels", params={"cursor": "x"}, headers=h(sqlite_tenant, "trainer"))
    assert bad.status_code == 422 and error(bad)["field"] == "cursor"
    ledger = client.get(f"{BASE}/{pid}/ledger", headers=h(sqlite_tenant, "trainer")).json()
    assert ledger["budget"]["spent"] == 2
    assert all(p["status"] == "labelled" and len(p["labelled_by"]) == 1 for p in ledger["data"])
    stats = client.get(f"{BASE}/{pid}/stats", headers=h(sqlite_tenant, "admin")).json()
    assert stats["tasks_done"] == 2 and stats["annotators"][0]["submitted"] == 2


def test_skip_undo_and_adjudication_over_http(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant, overlap_k=2)
    pid = project["id"]
    seed_step(pid, {"a": ["1", "1", "2", None], "b": ["3", "3", "3", "3"]})
    buy(client, sqlite_tenant, pid, ["a", "b"])
    with session_scope() as session:
        project_a = session.get(Project, sqlite_tenant.project_a)
        _, second_key = create_api_key(session, role=Role.annotator, projects=[project_a])
    one, two = h(sqlite_tenant, "annotator"), bearer(second_key)
    first = client.post(f"{BASE}/{pid}/queue/next", headers=one).json()
    skipped = client.post(f"{BASE}/{pid}/assignments/{first['assignment_id']}/skip", headers=one)
    assert skipped.status_code == 200 and skipped.json()["state"] == "skipped"
    other = client.post(f"{BASE}/{pid}/queue/next", headers=one).json()
    assert other["task_id"] != first["task_id"]
    client.post(f"{BASE}/{pid}/assignments/{other['assignment_id']}/submit",
                json={"submission_id": "u1", "answer": "2"}, headers=one)
    undo = client.post(f"{BASE}/{pid}/queue/undo", headers={**one, "Idempotency-Key": "undo-1"})
    assert undo.status_code == 200 and undo.json()["task"]["task_id"] == other["task_id"]
    replay = client.post(f"{BASE}/{pid}/queue/undo", headers={**one, "Idempotency-Key": "undo-1"})
    assert replay.status_code == 200 and replay.json()["undone"]["id"] == undo.json()["undone"]["id"]
    nothing = client.post(f"{BASE}/{pid}/queue/undo", headers=one)
    assert nothing.status_code == 409 and error(nothing)["code"] == "nothing_to_undo"
    client.post(f"{BASE}/{pid}/assignments/{other['assignment_id']}/submit",
                json={"submission_id": "u2", "answer": "2"}, headers=one)
    skipped_by_one = client.post(f"{BASE}/{pid}/queue/next", headers=two).json()
    assert skipped_by_one["task_id"] == first["task_id"]  # a skip frees the slot for others
    client.post(f"{BASE}/{pid}/assignments/{skipped_by_one['assignment_id']}/submit",
                json={"submission_id": "v0", "answer": "1"}, headers=two)
    theirs = client.post(f"{BASE}/{pid}/queue/next", headers=two).json()
    assert theirs["task_id"] == other["task_id"]
    client.post(f"{BASE}/{pid}/assignments/{theirs['assignment_id']}/submit",
                json={"submission_id": "v1", "kind": "ambiguous"}, headers=two)
    assert client.get(f"{BASE}/{pid}/adjudications", headers=one).status_code == 403
    listed = client.get(f"{BASE}/{pid}/adjudications", headers=h(sqlite_tenant, "admin")).json()
    [pending] = listed["data"]
    assert listed["next_cursor"] is None
    assert pending["task_id"] == other["task_id"] and len(pending["annotations"]) == 2
    decided = client.post(f"{BASE}/{pid}/tasks/{other['task_id']}/adjudication", json={"answer": "2"},
                          headers=h(sqlite_tenant, "admin"))
    assert decided.status_code == 201
    labels = client.get(f"{BASE}/{pid}/labels", headers=h(sqlite_tenant, "trainer")).json()["data"]
    assert [(x["label"], x["event"]) for x in labels] == [("2", "labelled")]


def test_annotator_accounts_created_by_admin(client: TestClient, sqlite_tenant: Tenant) -> None:
    from services.annotation import accounts

    project = create(client, sqlite_tenant)
    url = f"{BASE}/{project['id']}/annotators"
    made = client.post(url, json={"username": "alice", "password": "correct horse battery"},
                       headers=h(sqlite_tenant, "admin"))
    assert made.status_code == 201 and made.json()["role"] == "annotator" and "password" not in made.text
    short = client.post(url, json={"username": "bob", "password": "short"}, headers=h(sqlite_tenant, "admin"))
    assert short.status_code == 422 and error(short)["field"] == "password"
    taken = client.post(url, json={"username": "alice", "password": "correct horse battery"},
                        headers=h(sqlite_tenant, "admin"))
    assert taken.status_code == 409 and error(taken)["field"] == "username"
    listed = client.get(url, headers=h(sqlite_tenant, "admin")).json()
    assert [a["username"] for a in listed["data"]] == ["alice"] and listed["next_cursor"] is None
    with session_scope() as session:
        alice = accounts.authenticate(session, "alice", "correct horse battery")
        assert alice is not None and accounts.is_member(session, alice.id, project["id"])
        assert accounts.authenticate(session, "alice", "wrong horse battery") is None
        assert accounts.authenticate(session, "nobody", "correct horse battery") is None


def test_sse_stream_replays_the_feed_from_a_cursor(client: TestClient, sqlite_tenant: Tenant) -> None:
    project = create(client, sqlite_tenant)
    pid = project["id"]
    seed_step(pid, {"a": ["1", "1", "2", None], "b": ["3", "3", "3", "3"]})
    buy(client, sqlite_tenant, pid, ["a", "b"])
    who = h(sqlite_tenant, "annotator")
    for sid in ("s1", "s2"):
        lease = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
        client.post(f"{BASE}/{pid}/assignments/{lease['assignment_id']}/submit",
                    json={"submission_id": sid, "candidate": 0}, headers=who)
    response = client.get(f"{BASE}/{pid}/labels/stream", params={"limit": 1},
                          headers={**h(sqlite_tenant, "trainer"), "Last-Event-ID": "1"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block.startswith("id:")]
    assert len(events) == 1
    lines = dict(line.split(": ", 1) for line in events[0].splitlines())
    assert lines["id"] == "2" and lines["event"] == "label" and '"seq":2' in lines["data"]
    bad = client.get(f"{BASE}/{pid}/labels/stream", headers={**h(sqlite_tenant, "trainer"), "Last-Event-ID": "x"})
    assert bad.status_code == 422 and error(bad)["field"] == "Last-Event-ID"

"""`/v1/rewards` end to end in one process: gateway → verifier (in-process ASGI) → grader pool."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from rewardhub.embedded import build_embedded_app
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant

MATH = {"type": "math"}
ITEMS = [
    {"id": "half", "completion": "Adding gives \\boxed{\\frac{1}{2}}", "ground_truth": "0.5"},
    {"id": "wrong", "completion": "So the answer is \\boxed{3}.", "ground_truth": "4"},
]


@pytest.fixture
def tenant(database: str) -> Tenant:
    """A migrated tenant on each backend (``database``): what is stored is checked on PostgreSQL too."""
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(build_embedded_app()) as test_client:
        yield test_client


def _post(client: TestClient, tenant: Tenant, body: dict, key: str = "trainer", **headers: str):
    return client.post("/v1/rewards", json=body, headers={**bearer(tenant.keys[key]), **headers})


def test_inline_math_spec_scores_each_item(client: TestClient, tenant: Tenant) -> None:
    response = _post(client, tenant, {"spec": MATH, "items": ITEMS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["id"], r["score"], r["status"]) for r in body["results"]] == [("half", 1.0, "ok"), ("wrong", 0.0, "ok")]
    assert body["summary"]["by_status"]["ok"] == 2 and body["summary"]["mean_score"] == 0.5
    assert body["spec_ref"] == "inline" and body["project_id"] == tenant.project_a


def test_stored_spec_and_persistence(client: TestClient, tenant: Tenant) -> None:
    created = client.post(f"/v1/projects/{tenant.project_a}/reward-specs", json={"name": "m", "spec": MATH},
                          headers=bearer(tenant.keys["trainer"]))
    assert created.status_code == 201
    response = _post(client, tenant, {"spec_ref": "m@1", "items": ITEMS, "persist": True})
    assert response.status_code == 200, response.text
    assert response.json()["spec_ref"] == "m@1"
    from services.common.db import session_scope
    from services.gateway.models import RewardResultRecord

    with session_scope() as session:
        rows = session.scalars(select(RewardResultRecord).where(
            RewardResultRecord.request_id == response.json()["request_id"])).all()
        assert sorted((r.item_id, r.score, r.status, r.spec_ref) for r in rows) == [
            ("half", 1.0, "ok", "m@1"), ("wrong", 0.0, "ok", "m@1")]


def test_idempotency_key_replays_and_rejects_reuse(client: TestClient, tenant: Tenant) -> None:
    first = _post(client, tenant, {"spec": MATH, "items": ITEMS, "persist": True}, **{"Idempotency-Key": "k1"})
    again = _post(client, tenant, {"spec": MATH, "items": ITEMS, "persist": True}, **{"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    reused = _post(client, tenant, {"spec": MATH, "items": ITEMS[:1]}, **{"Idempotency-Key": "k1"})
    assert reused.status_code == 409 and reused.json()["error"]["field"] == "idempotency_key"
    from services.common.db import session_scope
    from services.gateway.models import RewardResultRecord

    with session_scope() as session:  # the replay did not persist a second copy
        assert len(session.scalars(select(RewardResultRecord)).all()) == 2


def test_streaming_ndjson(client: TestClient, tenant: Tenant) -> None:
    with client.stream("POST", "/v1/rewards", json={"spec": MATH, "items": ITEMS, "stream": True},
                       headers=bearer(tenant.keys["trainer"])) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    results = {line["id"]: line for line in lines if line["type"] == "result"}
    assert {k: v["score"] for k, v in results.items()} == {"half": 1.0, "wrong": 0.0}
    assert lines[-1]["type"] == "summary" and lines[-1]["summary"]["n"] == 2


@pytest.mark.parametrize(("body", "field"), [
    ({"items": ITEMS}, "body"),
    ({"spec": MATH}, "items"),
    ({"spec": MATH, "items": []}, "items"),
    ({"spec": MATH, "items": [{"id": "a"}]}, "items[0].completion"),
    ({"spec": MATH, "items": [{"id": "a", "completion": 5}]}, "items[0].completion"),
    ({"spec": {"type": "astrology"}, "items": ITEMS}, "spec"),
    ({"spec": {"type": "numeric", "abs_tol": "wide"}, "items": ITEMS}, "spec.numeric.abs_tol"),
    ({"spec": MATH, "spec_ref": "m@1", "items": ITEMS}, "body"),
    ({"spec": MATH, "items": ITEMS, "deadline_s": -1}, "deadline_s"),
    ({"spec_ref": "m@x", "items": ITEMS}, "spec_ref"),
])
@SQLITE_ONLY
def test_bad_input_is_422_naming_the_field(client: TestClient, tenant: Tenant, body: dict, field: str) -> None:
    response = _post(client, tenant, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", field), error


@SQLITE_ONLY
def test_oversized_payloads_are_rejected(client: TestClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_MAX_ITEM_CHARS", "1000")
    monkeypatch.setenv("REWARDHUB_MAX_BATCH_ITEMS", "3")
    reset_settings_cache()
    # An oversized completion is that item's problem: invalid_input naming the field, the rest graded.
    long_item = _post(client, tenant, {"spec": MATH, "items": [{"id": "a", "completion": "x" * 1001},
                                                              {"id": "b", "completion": "\\boxed{1}", "ground_truth": "1"}]})
    assert long_item.status_code == 200, long_item.text
    first, second = long_item.json()["results"]
    assert (first["status"], first["score"]) == ("invalid_input", None)
    assert first["details"]["reason"] == "completion: is 1001 characters long; the limit is 1000"
    assert (second["status"], second["score"]) == ("ok", 1.0)
    many = _post(client, tenant, {"spec": MATH, "items": [{"id": str(i), "completion": "1"} for i in range(4)]})
    assert many.status_code == 422 and many.json()["error"]["field"] == "items"


def test_project_must_be_named_when_ambiguous_and_roles_apply(client: TestClient, tenant: Tenant) -> None:
    root = _post(client, tenant, {"spec": MATH, "items": ITEMS}, key="root")
    assert root.status_code == 422 and root.json()["error"]["field"] == "project_id"
    assert _post(client, tenant, {"spec": MATH, "items": ITEMS, "project_id": tenant.project_b},
                 key="trainer").status_code == 404
    assert _post(client, tenant, {"spec": MATH, "items": ITEMS}, key="annotator").status_code == 403


def test_openrlhf_get_reward_with_key_in_url_password(client: TestClient, tenant: Tenant) -> None:
    client.post(f"/v1/projects/{tenant.project_a}/reward-specs", json={"name": "m", "spec": MATH},
                headers=bearer(tenant.keys["trainer"]))
    basic = base64.b64encode(f"rh:{tenant.keys['trainer']}".encode()).decode()
    body = {"query": ["Q: 1/2? A: \\boxed{0.5}", "Q: 2+2? A: \\boxed{5}"], "prompts": ["Q: 1/2? A:", "Q: 2+2? A:"],
            "labels": ["1/2", "4"]}
    response = client.post("/get_reward?spec_ref=m@1", json=body, headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["rewards"] == [1.0, 0.0] and data["scores"] == [1.0, 0.0]
    assert data["extra_logs"]["reward_ok"] == [1.0, 1.0]
    mismatched = client.post("/get_reward?spec_ref=m@1", json={**body, "labels": ["1"]},
                             headers={"Authorization": f"Basic {basic}"})
    assert mismatched.status_code == 422 and "labels" in mismatched.json()["error"]["message"]


def test_unreachable_verifier_is_503_with_the_cause(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_VERIFIER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("REWARDHUB_HTTP_MAX_RETRIES", "1")
    reset_settings_cache()
    with TestClient(build_embedded_app()) as client:
        response = _post(client, tenant, {"spec": MATH, "items": ITEMS}, **{"Idempotency-Key": "k2"})
        assert response.status_code == 503
        assert "verifier" in response.json()["error"]["message"]
        # The failed attempt released its idempotency claim: the retry is not stuck "in progress".
        assert _post(client, tenant, {"spec": MATH, "items": ITEMS}, **{"Idempotency-Key": "k2"}).status_code == 503


@SQLITE_ONLY
def test_ten_thousand_item_batch_keeps_order(client: TestClient, tenant: Tenant) -> None:
    items = [{"id": f"i{n}", "completion": f"answer {n % 7}", "ground_truth": "answer 3"} for n in range(10_000)]
    response = _post(client, tenant, {"spec": {"type": "exact"}, "items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [item["id"] for item in items]
    assert {r["status"] for r in results} == {"ok"}
    assert [r["score"] for r in results] == [1.0 if n % 7 == 3 else 0.0 for n in range(10_000)]


@SQLITE_ONLY
def test_one_more_item_than_the_cap_is_rejected(client: TestClient, tenant: Tenant) -> None:
    items = [{"id": f"i{n}", "completion": "x", "ground_truth": "x"} for n in range(10_001)]
    response = _post(client, tenant, {"spec": {"type": "exact"}, "items": items})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "items" and error["message"] == "items: has 10001 items; the limit is 10000 per request"


PATHOLOGICAL = [
    "\\boxed{" + "^".join(["9"] * 10) + "}",                   # an exponent tower
    "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",             # deeply nested braces
    "\\boxed{" + "9" * 5000 + "!}",                               # a huge factorial
]


@SQLITE_ONLY
def test_pathological_math_is_a_status_never_a_hang(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_VERIFIER_ITEM_TIMEOUT_S", "2")
    from services.common.settings import reset_settings_cache

    reset_settings_cache()
    normal = [{"id": f"ok{n}", "completion": f"so \\boxed{{{n}/2}}", "ground_truth": f"{n / 2}"} for n in range(1, 9)]
    bad = [{"id": f"bad{n}", "completion": text, "ground_truth": "1"} for n, text in enumerate(PATHOLOGICAL)]
    with TestClient(build_embedded_app()) as client:
        response = _post(client, tenant, {"spec": MATH, "items": bad + normal, "deadline_s": 30})
    assert response.status_code == 200, response.text
    by_id = {r["id"]: r for r in response.json()["results"]}
    assert [(by_id[i["id"]]["status"], by_id[i["id"]]["score"]) for i in normal] == [("ok", 1.0)] * len(normal)
    # The tower and the nesting outlast the 2 s item limit; the factorial is parsed and simply wrong.
    assert [by_id[item["id"]]["status"] for item in bad] == ["timeout", "timeout", "ok"]
    assert by_id["bad2"]["score"] == 0.0 and by_id["bad0"]["score"] is None, by_id


@SQLITE_ONLY
def test_a_straggler_is_tried_again_only_after_the_rest(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pool worker, the exponent tower queued first: it runs out of the 1 s first try, the
    ordinary items are graded, and only then does the tower get the spec's full budget."""
    from services.common.settings import reset_settings_cache
    from services.verifier import grading

    monkeypatch.setenv("REWARDHUB_VERIFIER_WORKERS", "1")
    monkeypatch.setenv("REWARDHUB_VERIFIER_ITEM_TIMEOUT_S", "4")
    reset_settings_cache()
    grading.shutdown_pool()  # the next request starts a one-worker pool
    try:
        normal = [{"id": f"ok{n}", "completion": f"so \\boxed{{{n}/2}}", "ground_truth": f"{n / 2}"}
                  for n in range(1, 4)]
        tower = {"id": "tower", "completion": PATHOLOGICAL[0], "ground_truth": "1"}
        with TestClient(build_embedded_app()) as client:
            response = _post(client, tenant, {"spec": {"type": "math", "timeout_s": 2}, "items": [tower, *normal],
                                               "stream": True})
        assert response.status_code == 200, response.text
        results = [json.loads(line) for line in response.text.splitlines()][:-1]  # the last line is the summary
        assert [r["id"] for r in results] == ["ok1", "ok2", "ok3", "tower"]
        assert all(r["status"] == "ok" and r["score"] == 1.0 for r in results[:3])
        assert results[3]["status"] == "timeout" and "graded again" in results[3]["details"]["first_try"]
        # Both tries ran (the detail says so); how long they took is the benchmarks' business, not a test's.
        assert results[3]["details"]["first_try"] == (
            "ran out of 1s; graded again with the full budget after the rest of the batch")
    finally:
        grading.shutdown_pool()
        reset_settings_cache()


@SQLITE_ONLY
def test_openrlhf_bad_query_values_are_422_naming_the_field(client: TestClient, tenant: Tenant) -> None:
    # Found by the OpenAPI fuzzer: a NUL in spec_ref reached the request model and was a 500.
    response = client.post("/get_reward?spec_ref=%00", json={"query": ["x"]}, headers=bearer(tenant.keys["trainer"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "spec_ref"
    response = client.post("/get_reward?spec_ref=math@1", json={"query": ["a\u0000b"]},
                           headers=bearer(tenant.keys["trainer"]))
    assert response.status_code == 422
    assert response.json()["error"]["field"].startswith("query")

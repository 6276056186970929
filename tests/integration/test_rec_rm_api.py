"""rec_rm end to end on SQLite and PostgreSQL (the ``database`` fixture): catalog versions, logs, the
reward configuration, a behaviour-model training job with progress and metrics, the ``rec`` grader
through /v1/rewards (alone and inside ``multi``), tenancy 404s, and bad input answered 4xx naming the field."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.settings import reset_settings_cache
from services.rec_rm import training
from tests.conftest import Tenant, bearer, make_tenant

ITEMS: list[dict[str, Any]] = [
    {"item_id": "r1", "title": "Sushi Zen", "attributes": {"cuisine": "japanese", "price": 25, "rating": 4.6}},
    {"item_id": "r2", "title": "Taco Loco", "attributes": {"cuisine": "mexican", "price": 12, "rating": 4.1}},
    {"item_id": "r3", "title": "Pho Bar", "attributes": {"cuisine": "vietnamese", "price": 14, "rating": 4.4}},
]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def logs(n: int = 300, seed: int = 3) -> str:
    """Users u0-u4 like japanese, u5-u9 mexican; 80% click on a liked cuisine, 10% otherwise."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        user = f"u{rng.randrange(10)}"
        item = rng.choice(ITEMS[:2])
        liked = (item["attributes"]["cuisine"] == "japanese") == (int(user[1:]) < 5)
        clicked = rng.random() < (0.8 if liked else 0.1)
        rows.append({"user_id": user, "item_id": item["item_id"], "event": "click" if clicked else "impression",
                     "timestamp": 1_760_000_000 + 60 * k})
    return jsonl(rows)


@pytest.fixture
def tenant(database: str, monkeypatch: pytest.MonkeyPatch) -> Tenant:
    monkeypatch.setenv("REWARDHUB_REC_RM_EMBEDDING_MODEL", "hashing")  # MiniLM itself: tests/unit/rec_rm
    reset_settings_cache()
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    from rewardhub.embedded import build_embedded_app

    with TestClient(build_embedded_app()) as test_client:
        yield test_client


def base(tenant: Tenant, project: str | None = None) -> str:
    return f"/services/rec_rm/v1/projects/{project or tenant.project_a}"


def upload(client: TestClient, url: str, name: str, text: str, key: str, **headers: str) -> Any:
    return client.post(url, files={"file": (name, text)}, headers={**bearer(key), **headers})


def test_catalog_logs_training_and_the_rec_grader(client: TestClient, tenant: Tenant) -> None:
    key = tenant.keys["trainer"]
    url = base(tenant)
    first = upload(client, url + "/catalogs", "items.jsonl", jsonl(ITEMS), key, **{"Idempotency-Key": "cat-1"})
    assert first.status_code == 201, first.text
    assert (first.json()["version"], first.json()["n_items"]) == (1, 3)
    replay = upload(client, url + "/catalogs", "items.jsonl", jsonl(ITEMS), key, **{"Idempotency-Key": "cat-1"})
    assert replay.json()["id"] == first.json()["id"] and replay.headers["Idempotent-Replayed"] == "true"
    reused = upload(client, url + "/catalogs", "items.jsonl", jsonl(ITEMS[:1]), key, **{"Idempotency-Key": "cat-1"})
    assert reused.status_code == 409
    csv_text = "item_id,title,cuisine,price,rating\nr1,Sushi Zen,japanese,26,4.6\nr2,Taco Loco,mexican,12,4.1\n"
    second = upload(client, url + "/catalogs", "items.csv", csv_text, key)
    assert second.json()["version"] == 2 and second.json()["n_items"] == 2
    assert client.get(url + "/catalogs/1/items/r3", headers=bearer(key)).json()["title"] == "Pho Bar"  # v1 kept
    assert client.get(url + "/catalogs/2/items/r3", headers=bearer(key)).status_code == 404
    page = client.get(url + "/catalogs?limit=1", headers=bearer(key)).json()
    assert [c["version"] for c in page["data"]] == [1] and page["next_cursor"]
    rest = client.get(url + f"/catalogs?limit=1&cursor={page['next_cursor']}", headers=bearer(key)).json()
    assert [c["version"] for c in rest["data"]] == [2] and rest["next_cursor"] is None

    imported = upload(client, url + "/interactions", "logs.jsonl", logs(), key)
    assert imported.status_code == 201 and imported.json()["imported"] == 300
    mine = client.get(url + "/interactions?user_id=u1&limit=500", headers=bearer(key)).json()["data"]
    assert mine and {e["user_id"] for e in mine} == {"u1"}
    assert [e["timestamp"] for e in mine] == sorted(e["timestamp"] for e in mine)

    config = {"weights": {"instruction": 1, "factual": 2, "relevance": 1, "behaviour": 1}}
    stored = client.post(url + "/reward-config", json=config, headers=bearer(key))
    assert stored.status_code == 201 and stored.json()["version"] == 1
    assert client.get(url + "/reward-config", headers=bearer(key)).json()["config"]["weights"]["factual"] == 2

    job = client.post(url + "/behaviour-models", json={"max_iter": 20}, headers=bearer(key))
    assert job.status_code == 202, job.text
    training.wait_local(job.json()["id"], timeout_s=120)
    model = client.get(url + f"/behaviour-models/{job.json()['id']}", headers=bearer(key)).json()
    assert model["state"] == "succeeded" and model["progress"] == 1.0 and model["done"] == model["total"] == 302
    metrics = model["metrics"]
    assert metrics["n_train"] + metrics["n_test"] == 300 and metrics["auc"] > 0.7 and metrics["log_loss"] > 0

    good = json.dumps({"recommendations": [{"item_id": "r1", "price": "$26", "cuisine": "Japanese"}]})
    wrong_price = json.dumps({"recommendations": [{"item_id": "r1", "price": 9}]})
    ghost = json.dumps({"recommendations": [{"item_id": "r1"}, {"title": "Burger Barn"}]})
    items = [{"id": "good", "prompt": "japanese food tonight", "completion": good, "ground_truth": {"user_id": "u1"}},
             {"id": "wrong", "prompt": "japanese food", "completion": wrong_price, "metadata": {"user_id": "u1"}},
             {"id": "ghost", "prompt": "food", "completion": ghost, "ground_truth": {"user_id": "u1"}},
             {"id": "prose", "prompt": "food", "completion": "Sushi Zen is lovely.", "ground_truth": {"user_id": "u1"}},
             {"id": "bad-truth", "prompt": "food", "completion": good, "ground_truth": "u1"},
             {"id": "bad-n", "prompt": "food", "completion": good, "ground_truth": {"user_id": "u1", "n_items": -1}}]
    response = client.post("/v1/rewards", json={"spec": {"type": "rec"}, "items": items}, headers=bearer(key))
    assert response.status_code == 200, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    assert results["good"]["status"] == "ok" and set(results["good"]["sub_scores"]) == {
        "instruction", "factual", "relevance", "behaviour"}
    assert results["good"]["sub_scores"]["factual"] == 1.0 and results["good"]["details"]["catalog_version"] == 2
    good_score = results["good"]["score"]
    wrong = results["wrong"]
    assert wrong["status"] == "ok" and wrong["sub_scores"]["factual"] == 0.0 and 0 < wrong["score"] < good_score
    assert (results["ghost"]["status"], results["ghost"]["score"]) == ("ok", 0.0)
    assert "Burger Barn" in results["ghost"]["details"]["reason"]
    assert results["prose"]["score"] == 0.0 and results["prose"]["details"]["vetoed_by"] == ["instruction"]
    assert results["bad-truth"]["status"] == "invalid_input" and results["bad-truth"]["score"] is None
    assert results["bad-n"]["status"] == "invalid_input" and results["bad-n"]["details"]["field"] == "ground_truth.n_items"

    streamed = client.post("/v1/rewards", json={"spec": {"type": "rec"}, "items": items[:3], "stream": True},
                           headers=bearer(key))
    lines = [json.loads(line) for line in streamed.text.splitlines() if line.strip()]
    assert {line["id"]: line["score"] for line in lines if "id" in line} == {
        i: results[i]["score"] for i in ("good", "wrong", "ghost")}
    root = bearer(tenant.keys["root"])  # a key of every project names the project in the spec
    named = client.post("/v1/rewards", json={"project_id": tenant.project_a, "items": items[:1],
                                             "spec": {"type": "rec", "project_id": tenant.project_a}}, headers=root)
    assert named.json()["results"][0]["score"] == pytest.approx(good_score)
    unnamed = client.post("/v1/rewards", json={"project_id": tenant.project_a, "items": items[:1],
                                               "spec": {"type": "rec"}}, headers=root).json()["results"][0]
    assert unnamed["status"] == "invalid_input" and "project_id" in unnamed["details"]["reason"]
    elsewhere = client.post("/v1/rewards", json={"spec": {"type": "rec", "project_id": tenant.project_b},
                                                 "items": items[:1]}, headers=bearer(key)).json()["results"][0]
    assert elsewhere["status"] == "invalid_input" and "not found" in elsewhere["details"]["reason"]

    multi = {"type": "multi", "graders": {"rec": {"type": "rec", "dimensions": ["instruction", "factual"]},
                                          "short": {"type": "regex", "pattern": "r1"}}, "weights": {"rec": 3}}
    combined = client.post("/v1/rewards", json={"spec": multi, "items": items[:2]}, headers=bearer(key)).json()
    scores = {r["id"]: r for r in combined["results"]}
    # good: rec = (1·1 + 2·1) / 3 = 1 (factual weighs 2 in the stored config), regex 1 → (3·1 + 1) / 4 = 1
    assert scores["good"]["score"] == pytest.approx(1.0)
    # wrong price: rec = (1·1 + 2·0) / 3 = 1/3, regex 1 → (3 · 1/3 + 1) / 4 = 0.5
    assert scores["wrong"]["score"] == pytest.approx(0.5)


def test_tenancy_and_bad_input(client: TestClient, tenant: Tenant) -> None:
    key = tenant.keys["trainer"]
    url = base(tenant)
    other = base(tenant, tenant.project_b)
    assert upload(client, other + "/catalogs", "i.jsonl", jsonl(ITEMS), key).status_code == 404
    assert client.get(other + "/reward-config", headers=bearer(key)).status_code == 404
    assert client.get(other + "/catalogs", headers=bearer(key)).json()["error"]["field"] == "project_id"
    bad_line = upload(client, url + "/catalogs", "i.jsonl", jsonl(ITEMS) + '{"title": "x"}\n', key)
    assert bad_line.status_code == 422 and bad_line.json()["error"]["field"] == "file"
    assert "line 4: item_id" in bad_line.json()["error"]["message"]
    no_format = upload(client, url + "/catalogs", "items.txt", jsonl(ITEMS), key)
    assert no_format.status_code == 422 and no_format.json()["error"]["field"] == "format"
    bad_weights = client.post(url + "/reward-config", json={"weights": {"charm": 1}}, headers=bearer(key))
    assert bad_weights.status_code == 422 and bad_weights.json()["error"]["field"] == "weights"
    no_catalog = client.post(url + "/behaviour-models", json={}, headers=bearer(key))
    assert no_catalog.status_code == 404 and no_catalog.json()["error"]["field"] == "catalog_version"
    assert client.get(url + "/catalogs/9", headers=bearer(key)).status_code == 404

    upload(client, url + "/catalogs", "i.jsonl", jsonl(ITEMS), key)
    admin_b = tenant.keys["admin_b"]  # project B cannot read project A's catalog through its own path
    assert client.get(url + "/catalogs/1/items", headers=bearer(admin_b)).status_code == 404
    upload(client, url + "/interactions", "l.jsonl", logs(n=5), key)
    job = client.post(url + "/behaviour-models", json={}, headers=bearer(key)).json()
    training.wait_local(job["id"], timeout_s=60)
    failed = client.get(url + f"/behaviour-models/{job['id']}", headers=bearer(key)).json()
    assert failed["state"] == "failed" and "at least 10" in failed["error"]
    other_model = client.get(other + f"/behaviour-models/{job['id']}", headers=bearer(tenant.keys["root"]))
    assert other_model.status_code == 404 and other_model.json()["error"]["field"] == "model_id"

    reply = json.dumps({"recommendations": [{"item_id": "r1"}]})
    item = {"id": "a", "prompt": "sushi", "completion": reply}
    missing_version = client.post("/v1/rewards", json={"spec": {"type": "rec", "catalog_version": 7}, "items": [item]},
                                  headers=bearer(key)).json()["results"][0]
    assert missing_version["status"] == "invalid_input" and "catalog version 7" in missing_version["details"]["reason"]
    bad_spec = client.post("/v1/rewards", json={"spec": {"type": "rec", "batch_size": 0}, "items": [item]},
                           headers=bearer(key))
    assert bad_spec.status_code == 422 and "batch_size" in bad_spec.json()["error"]["field"]
    # No behaviour model succeeded: the dimension says so and the hybrid is undecided, never a silent 0.
    undecided = client.post("/v1/rewards", json={"spec": {"type": "rec"}, "items": [item]},
                            headers=bearer(key)).json()["results"][0]
    assert undecided["status"] == "invalid_input" and undecided["score"] is None
    assert "behaviour" in undecided["details"]["reason"]
    direct = client.post("/services/rec_rm/v1/score", json={"items": [{"id": "x", "response": "{}"}] * 2},
                         headers=bearer(key))
    assert direct.status_code == 422 and direct.json()["error"]["field"] == "items"


def test_the_sweeper_requeues_a_dead_workers_job_and_resubmits_a_lost_one(tenant: Tenant) -> None:
    from datetime import timedelta

    from services.common.db import session_scope, utcnow
    from services.rec_rm import operations
    from services.rec_rm.models import BehaviourModel, ModelState
    from services.rec_rm.schemas import TrainRequest

    operations.import_catalog(tenant.project_a, "jsonl", jsonl(ITEMS).encode(), None)
    operations.import_interactions(tenant.project_a, "jsonl", logs().encode(), None)
    long_ago = utcnow() - timedelta(hours=2)
    with session_scope() as session:
        dead = training.create_model(session, tenant.project_a, TrainRequest(max_iter=10))
        dead.state, dead.started_at, dead.heartbeat_at = ModelState.running, long_ago, long_ago
        lost = training.create_model(session, tenant.project_a, TrainRequest(max_iter=10))
        lost.created_at = long_ago
        fresh = training.create_model(session, tenant.project_a, TrainRequest(max_iter=10))
        ids = (dead.id, lost.id, fresh.id)
    submitted: list[str] = []
    assert training.sweep(submitted.append) == {"requeued": 1, "resubmitted": 1}
    assert sorted(submitted) == sorted(ids[:2])  # the fresh queued job is left to its own submission
    for model_id in submitted:  # what a worker does with each resubmission: the job runs to the end
        assert "auc" in training.run_training(model_id)
        assert "skipped" in training.run_training(model_id)  # a duplicate delivery is a no-op
    with session_scope() as session:
        states = [session.get(BehaviourModel, i).state for i in ids]  # type: ignore[union-attr]
    assert states == [ModelState.succeeded, ModelState.succeeded, ModelState.queued]

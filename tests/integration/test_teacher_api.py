"""The teacher service end to end through TestClient: a tiny random-weights model saved to a tmp
teacher_models_dir, ScriptedFakeBackend (a TEST DOUBLE of the LLM) for reflect and the examiner, tenancy,
bad input, and an EMA weight push with an idempotency key; on SQLite and PostgreSQL (``database``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from services.common.settings import reset_settings_cache
from services.teacher.app import create_app
from services.teacher.backends import llm_backend
from services.teacher.model_cache import CACHE
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant
from tests.unit.teacher.fakes import ScriptedFakeBackend


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("teacher-models")
    build_tiny_causal_lm(root / "tiny", seed=0)
    return root


@pytest.fixture
def tenant(database: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tenant]:
    monkeypatch.setenv("REWARDHUB_TEACHER_MODELS_DIR", str(models_dir))
    reset_settings_cache()
    CACHE.clear()
    yield make_tenant()
    CACHE.clear()


@pytest.fixture
def fake() -> ScriptedFakeBackend:
    return ScriptedFakeBackend()


@pytest.fixture
def client(tenant: Tenant, fake: ScriptedFakeBackend) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[llm_backend] = lambda: fake
    with TestClient(app) as test_client:
        yield test_client


def call(client: TestClient, tenant: Tenant, method: str, path: str, body: Any = None, key: str = "trainer",
         **kw: Any) -> Any:
    return client.request(method, path, json=body, headers={**bearer(tenant.keys[key]), **kw.pop("headers", {})},
                          **kw)


def register(client: TestClient, tenant: Tenant, name: str = "t", kind: str = "local") -> Any:
    return call(client, tenant, "PUT", f"/v1/teacher-models/{name}", {"kind": kind, "path": "tiny"})


@SQLITE_ONLY  # reads only: the database's part here is auth (the EMA push below runs on both)
def test_register_score_and_tenancy(client: TestClient, tenant: Tenant) -> None:
    first = register(client, tenant)
    assert first.status_code == 201, first.text
    assert first.json()["project_id"] == tenant.project_a and first.json()["version"] == 0
    assert register(client, tenant).status_code == 200  # the same registration again changes nothing
    listed = call(client, tenant, "GET", "/v1/teacher-models?limit=1").json()
    assert [m["name"] for m in listed["data"]] == ["t"] and listed["next_cursor"] is None

    items: list[dict[str, Any]] = [
        {"id": "ids", "context_ids": [5, 17, 9], "continuation_ids": [40, 41]},
        {"id": "text", "context": "What is 2 + 3?", "continuation_ids": [30]},
        {"id": "oov", "context_ids": [5], "continuation_ids": [10 ** 6]},
        {"id": "both", "context_ids": [5], "context": "x", "continuation_ids": [3]},
        {"id": "empty", "context_ids": [5], "continuation_ids": []}]
    body: dict[str, Any] = {"model": "t", "top_k": 3, "items": items}
    response = call(client, tenant, "POST", "/v1/score", body)
    assert response.status_code == 200, response.text
    out = response.json()
    ids, text, oov, both, empty = out["results"]
    assert ids["status"] == "ok" and len(ids["logprobs"]) == 2 and all(v <= 0 for v in ids["logprobs"])
    assert len(ids["top_k"]["ids"]) == 2 and len(ids["top_k"]["ids"][0]) == 3
    assert text["status"] == "ok" and text["context_tokens"] > 1
    assert oov["status"] == "invalid_input" and "outside the vocabulary" in oov["error"]
    assert both["status"] == "invalid_input" and "exactly one" in both["error"]
    assert empty["status"] == "invalid_input" and "continuation_ids" in empty["error"]
    assert out["kl_approximation"].startswith("top-k forward KL with the tail lumped")

    # Another project's key sees no such model; an annotator may not score; a bad field is named.
    outsider = call(client, tenant, "POST", "/v1/score", body, key="admin_b")
    assert outsider.status_code == 404 and outsider.json()["error"]["field"] == "model"
    assert call(client, tenant, "POST", "/v1/score", body, key="annotator").status_code == 403
    wrong_project = call(client, tenant, "POST", "/v1/score", {**body, "project_id": tenant.project_b})
    assert wrong_project.status_code == 404 and wrong_project.json()["error"]["field"] == "project_id"
    too_many = call(client, tenant, "POST", "/v1/score", {**body, "top_k": 10 ** 4})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "top_k"
    duplicate = call(client, tenant, "POST", "/v1/score", {**body, "items": [items[0]] * 2})
    assert duplicate.status_code == 422 and duplicate.json()["error"]["field"] == "items"
    bad_path = call(client, tenant, "PUT", "/v1/teacher-models/x", {"kind": "local", "path": "../etc"})
    assert bad_path.status_code == 422 and bad_path.json()["error"]["field"] == "path"
    bad_name = call(client, tenant, "PUT", "/v1/teacher-models/-x", {"path": "tiny"})
    assert bad_name.status_code == 422 and bad_name.json()["error"]["field"] == "name"
    register(client, tenant, "u")
    page = call(client, tenant, "GET", "/v1/teacher-models?limit=1").json()
    assert [m["name"] for m in page["data"]] == ["t"] and page["next_cursor"]
    rest = call(client, tenant, "GET", f"/v1/teacher-models?limit=1&cursor={page['next_cursor']}").json()
    assert [m["name"] for m in rest["data"]] == ["u"] and rest["next_cursor"] is None
    bad_cursor = call(client, tenant, "GET", "/v1/teacher-models?cursor=zzz")
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["field"] == "cursor"
    assert call(client, tenant, "GET", "/v1/teacher-models", key="admin_b").json()["data"] == []
    assert call(client, tenant, "DELETE", "/v1/teacher-models/t").status_code == 204
    assert call(client, tenant, "GET", "/v1/teacher-models/t").status_code == 404


def _safetensors(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state)


def test_ema_push_with_an_idempotency_key_is_applied_once(client: TestClient, tenant: Tenant) -> None:
    assert register(client, tenant, "ema", "ema").status_code == 201
    score = {"model": "ema", "items": [{"id": "a", "context_ids": [5, 6], "continuation_ids": [7, 8]}]}
    before = call(client, tenant, "POST", "/v1/score", score).json()["results"][0]["logprobs"]
    payload = _safetensors({"model.norm.weight": torch.full((64,), 3.0)})
    headers = {**bearer(tenant.keys["trainer"]), "Idempotency-Key": "step-1", "content-type": "application/octet-stream"}
    first = client.put("/v1/teacher-models/ema/weights?tau=0.5", content=payload, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["model"]["version"] == 1 and first.json()["mode"] == "ema"
    again = client.put("/v1/teacher-models/ema/weights?tau=0.5", content=payload, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["model"]["version"] == 1
    shown = call(client, tenant, "GET", "/v1/teacher-models/ema").json()
    assert shown["version"] == 1 and shown["last_tau"] == 0.5
    after = call(client, tenant, "POST", "/v1/score", score).json()["results"][0]["logprobs"]
    assert after != before  # the norm weight moved from 1 to 0.5·1 + 0.5·3 = 2
    reused = client.put("/v1/teacher-models/ema/weights?tau=0.2", content=payload, headers=headers)
    assert reused.status_code == 409
    garbage = client.put("/v1/teacher-models/ema/weights", content=b"nope", headers={
        **bearer(tenant.keys["trainer"]), "content-type": "application/octet-stream"})
    assert garbage.status_code == 422 and garbage.json()["error"]["field"] == "body"
    bad_tau = client.put("/v1/teacher-models/ema/weights?tau=2", content=payload, headers=bearer(tenant.keys["trainer"]))
    assert bad_tau.status_code == 422 and bad_tau.json()["error"]["field"] == "tau"
    register(client, tenant, "loc")
    local = client.put("/v1/teacher-models/loc/weights", content=payload, headers=bearer(tenant.keys["trainer"]))
    assert local.status_code == 422 and local.json()["error"]["field"] == "name"


@SQLITE_ONLY  # reads only, as above
def test_reflect_modulate_and_examiner(client: TestClient, tenant: Tenant, fake: ScriptedFakeBackend) -> None:
    fake.replies.extend(["The answer is \\boxed{12}.", "Recount the second basket."])
    item = {"id": "a", "question": "5 + 7?", "response": "11", "signal": {"kind": "verifier", "text": "wrong"},
            "answer": "12"}
    reflected = call(client, tenant, "POST", "/v1/reflect", {"items": [item]})
    assert reflected.status_code == 200, reflected.text
    result = reflected.json()["results"][0]
    assert result["status"] == "ok" and result["hint"] == "Recount the second basket."
    assert reflected.json()["summary"]["rejections_by_reason"] == {"boxed": 1}
    bad = call(client, tenant, "POST", "/v1/reflect", {"items": [{**item, "signal": {"kind": "oracle", "text": "x"}}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "items[0].signal.kind"

    modulated = call(client, tenant, "POST", "/v1/modulate", {
        "params": {"alpha0": 1.0, "schedule": "constant"},
        "items": [{"id": "r", "advantage": -1.0, "teacher_logprobs": [-3.0, -1.0], "student_logprobs": [-1.0, -1.0]}]})
    # CIG = [−2, 0]; A < 0, τ₋ = 0: w = [1 + 1·2, 1] = [3, 1]; Â = [−3, −1]
    assert modulated.json()["results"][0]["advantages"] == [-3.0, -1.0]
    bad_alpha = call(client, tenant, "POST", "/v1/modulate", {"params": {"alpha0": -1}, "items": []})
    assert bad_alpha.status_code == 422 and bad_alpha.json()["error"]["field"] == "params.alpha0"

    fake.replies.append(json.dumps({"answer": "Oslo", "question": "Which city ends the fjord?",
                                    "path": [{"hop": 1, "evidence": "doc", "step": "the fjord ends at Oslo"}]}))
    tasks = call(client, tenant, "POST", "/v1/examiner/tasks", {"items": [{"id": "q", "hops": 1}]})
    assert tasks.status_code == 200 and tasks.json()["results"][0]["format_ok"] is True
    graded = call(client, tenant, "POST", "/v1/examiner/rewards", {"items": [
        {"id": "q", "hops": 1, "passed": 1, "samples": 3}]})
    assert graded.json()["results"][0]["reward"] == 1.0  # (3 − 1)/(3 − 1)

    # The registered teacher model itself writes the hint (random weights: gibberish, hint or rejection).
    register(client, tenant)
    out = call(client, tenant, "POST", "/v1/reflect", {"model": "t", "max_tokens": 8, "items": [item]})
    assert out.status_code == 200, out.text
    result = out.json()["results"][0]
    assert result["status"] in ("ok", "rejected") and result["attempts"] >= 1
    missing = call(client, tenant, "POST", "/v1/reflect", {"model": "nope", "items": [item]})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "model"

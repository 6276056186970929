"""RecRM's instruction dimension with a reply language: ``instruction.language`` in the configuration, or a
``response_language`` constraint of the item, checked by the real verifier (langdetect) on the reply's
free-text fields, never on its ids, titles or JSON syntax."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.common.settings import reset_settings_cache
from services.rec_rm.config import LANGUAGE_FIELDS, RecConfig
from services.rec_rm.scoring import Request, instruction_spec
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant

FR = "Un endroit calme avec d'excellents sushis, le personnel est aimable et le service est rapide."
EN = "A quiet place with excellent sushi, the staff are friendly and the service is quick."
DE = "Ein ruhiger Ort mit ausgezeichnetem Sushi, das Personal ist freundlich und der Service ist schnell."


def reply(reason: str | None, title: str = "Sushi Zen") -> str:
    entry: dict[str, Any] = {"item_id": "r1", "title": title, "cuisine": "japanese", "price": 25}
    if reason is not None:
        entry["reason"] = reason
    return json.dumps({"recommendations": [entry]})


def test_the_language_option_adds_the_constraint_on_the_free_text_fields() -> None:
    config = RecConfig.model_validate({"instruction": {"language": "FR", "schema": None}})
    assert config.instruction.language == "fr"
    spec = instruction_spec(config, Request(id="a", query="q", response="{}"))
    assert spec == {"type": "instruction", "constraints": [
        {"kind": "response_language", "language": "fr", "json_fields": list(LANGUAGE_FIELDS)}]}
    # An item's own constraint without fields gets the same fields; one with fields keeps them.
    own: list[dict[str, Any]] = [{"kind": "response_language", "language": "de", "json_fields": None},
                                 {"kind": "response_language", "language": "de", "json_fields": ["pitch"]}]
    spec = instruction_spec(RecConfig(), Request(id="a", query="q", response="{}", constraints=own))
    assert spec is not None and spec["type"] == "multi"
    assert [c["json_fields"] for c in spec["graders"]["constraints"]["constraints"]] == [list(LANGUAGE_FIELDS),
                                                                                         ["pitch"]]
    assert instruction_spec(RecConfig.model_validate({"instruction": {"schema": None}}),
                            Request(id="a", query="q", response="{}")) is None  # no language: nothing added


def test_an_unknown_language_code_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        RecConfig.model_validate({"instruction": {"language": "french"}})
    [error] = caught.value.errors()
    assert error["loc"] == ("instruction", "language")
    assert "'french' is not a supported ISO 639-1 code" in error["msg"]


@pytest.fixture
def tenant(database: str, monkeypatch: pytest.MonkeyPatch) -> Tenant:
    monkeypatch.setenv("REWARDHUB_REC_RM_EMBEDDING_MODEL", "hashing")
    monkeypatch.setenv("REWARDHUB_VERIFIER_WORKERS", "1")
    reset_settings_cache()
    return make_tenant()


def dimension(result: dict[str, Any]) -> tuple[str, float | None, str]:
    """The instruction dimension's status, score and evidence (as JSON text)."""
    found = result["dimensions"]["instruction"]
    return found["status"], found["score"], json.dumps(found["evidence"])


@SQLITE_ONLY
def test_the_verifier_checks_the_reply_language(tenant: Tenant) -> None:
    """rec_rm's /v1/score (what the rec grader calls) with the real verifier mounted in-process, as the
    embedded default has it: rec_rm reaches it over HTTP (ASGI) with the caller's key."""
    from services.common.service_client import register_local_app
    from services.rec_rm.app import create_app as rec_rm_app
    from services.verifier.app import create_app as verifier_app

    register_local_app("verifier", verifier_app())
    key = tenant.keys["trainer"]
    french = {"dimensions": ["instruction"], "config": {"instruction": {"language": "fr"}}}
    items = [{"id": "fr", "query": "sushi ce soir", "response": reply(FR)},
             # English title, keys and attribute values around a French reason: still French.
             {"id": "fr-english-title", "query": "sushi", "response": reply(FR, title="The Golden Dragon House")},
             {"id": "en", "query": "sushi tonight", "response": reply(EN)},
             {"id": "no-text", "query": "sushi", "response": reply(None)},
             {"id": "prose", "query": "sushi", "response": FR}]
    # Per item: the item's own constraint (no configuration language).
    german = [{"id": "de", "query": "sushi", "response": reply(DE),
               "constraints": [{"kind": "response_language", "language": "de"}]},
              {"id": "de-wanted", "query": "sushi", "response": reply(FR),
               "constraints": [{"kind": "response_language", "language": "de"}]}]
    with TestClient(rec_rm_app()) as client:
        response = client.post("/v1/score", json={**french, "items": items}, headers=bearer(key))
        assert response.status_code == 200, response.text
        results = {r["id"]: r for r in response.json()["results"]}
        per_item = client.post("/v1/score", json={"dimensions": ["instruction"], "items": german}, headers=bearer(key))
        bad = client.post("/v1/score", json={"config": {"instruction": {"language": "xx"}}, "items": items[:1]},
                          headers=bearer(key))
    for name in ("fr", "fr-english-title"):
        assert (results[name]["status"], results[name]["score"]) == ("ok", 1.0), results[name]
        assert '"detected": "fr"' in dimension(results[name])[2]
    # The schema passes (1) and the language fails (0): the verifier's multi mean (1 + 0) / 2 = 0.5, under the
    # instruction gate of 1.0, so the hybrid is vetoed to 0.
    for name in ("en", "no-text"):
        result = results[name]
        assert dimension(result)[:2] == ("ok", 0.5), result
        assert (result["score"], result["vetoed_by"]) == (0.0, ["instruction"])
    assert '"detected": "en"' in dimension(results["en"])[2]
    assert "no natural-language text under reason, reasons, why" in dimension(results["no-text"])[2]
    assert dimension(results["prose"])[:2] == ("ok", 0.5)  # French prose, but not the JSON schema
    assert per_item.status_code == 200, per_item.text
    assert {r["id"]: r["score"] for r in per_item.json()["results"]} == {"de": 1.0, "de-wanted": 0.0}
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "config.instruction.language", bad.text

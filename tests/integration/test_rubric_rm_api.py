"""rubric_rm routes end to end: a real OpenAI-compatible client against ScriptedLLMServer (a TEST DOUBLE
served on a loopback port), a tiny random-weights local model, an unreachable backend, bad input,
and `/v1/rewards` with a rubric spec through the embedded app (gateway → verifier → rubric_rm)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.llm.scripted import ScriptedLLMServer, last_user_text
from services.common.settings import reset_settings_cache
from services.rubric_rm import backends, jobs
from services.rubric_rm.app import create_app
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant
from tests.unit.rubric_rm.helpers import (
    DIAGNOSE,
    GENERATOR,
    PAIRWISE,
    POINTWISE,
    SYNTHESISE,
    diagnosis_json,
    fails_in_diagnosis,
    judge_prompt_responses,
    section,
    system_text,
)

RUBRIC_TEXT = "- states the correct result\n- never insults the user\nPrinciples:\n- concise"
GENERATED = {"hard_rules": [{"rule_id": "R1", "type": "must", "criterion": "states the correct result",
                             "rationale": "accuracy", "test": "the result is right"}],
             "principles": [{"principle_id": "P1", "description": "concise"}]}
PAIR = {"instruction": "What is 2 + 2?", "response_a": "2 + 2 = 4.", "response_b": "It is 5, WRONG."}


def judge_script(request: dict[str, Any]) -> str:
    """The test double's rules: an answer containing WRONG is bad, anything else good; GARBAGE → prose."""
    system, text = system_text(request), last_user_text(request)
    if "GARBAGE" in text:
        return "I think both answers have merit."
    if system == DIAGNOSE:
        return diagnosis_json(2 if "WRONG" in section(text, "Answer") else 0)
    if system == SYNTHESISE:
        first = fails_in_diagnosis(section(text, "Diagnosis of Response 1"))
        second = fails_in_diagnosis(section(text, "Diagnosis of Response 2"))
        predicts = "1" if first < second else "2" if second < first else "tie"
        return json.dumps({**GENERATED, "rubric_predicts": predicts})
    if system == GENERATOR:
        return json.dumps(GENERATED)
    if system == PAIRWISE:
        first, _ = judge_prompt_responses(request)
        return "R1 checked.\nWinner: Response " + ("B" if "WRONG" in first else "A")
    if system == POINTWISE:
        answer = section(text, "Answer")
        rules = [{"rule_id": r, "passed": "WRONG" not in answer} for r in ("R1", "R2") if f"[{r}]" in text]
        return json.dumps({"rules": rules, "principles": [{"principle_id": "P1", "score": 0.5}]})
    return "unexpected prompt"


def _configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    backends.forget_backends()


@pytest.fixture
def tenant(database: str) -> Iterator[Tenant]:
    """A migrated tenant on each backend (``database``): stored rubrics and jobs are checked on PostgreSQL too."""
    yield make_tenant()
    backends.forget_backends()


@pytest.fixture
def llm(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLMServer]:
    server = ScriptedLLMServer(judge_script)
    _configure(monkeypatch, REWARDHUB_LLM_BASE_URL=server.start(), REWARDHUB_LLM_MODEL="judge",
               REWARDHUB_LLM_MAX_RETRIES="0", REWARDHUB_LLM_TIMEOUT_S="20")
    yield server
    server.stop()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def post(client: TestClient, tenant: Tenant, path: str, body: dict[str, Any], key: str = "trainer") -> Any:
    return client.post(path, json=body, headers=bearer(tenant.keys[key]))


# --------------------------------------------------------------------------------- scripted double
def test_diagnose_returns_the_structured_diagnosis(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    response = post(client, tenant, "/v1/diagnose", {"instruction": "2+2?", "response": "5 WRONG"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert sum(f["status"] == "fail" for f in body["diagnosis"]["findings"]) == 2


def test_generate_stores_versions_and_reuses_the_cache(llm: ScriptedLLMServer, client: TestClient,
                                                       tenant: Tenant) -> None:
    first = post(client, tenant, "/v1/rubrics/generate", PAIR).json()
    assert first["status"] == "ok" and first["cached"] is False and first["version"] == 1
    calls = len(llm.requests)
    again = post(client, tenant, "/v1/rubrics/generate", {**PAIR, "response_b": "another answer"}).json()
    assert again["cached"] is True and again["rubric_id"] == first["rubric_id"]
    assert len(llm.requests) == calls  # served from the store: no LLM call
    fresh = post(client, tenant, "/v1/rubrics/generate", {**PAIR, "use_cache": False}).json()
    assert fresh["version"] == 2 and fresh["rubric_id"] != first["rubric_id"]
    assert fresh["generator_version"] == first["generator_version"]
    other = post(client, tenant, "/v1/rubrics/generate", {**PAIR, "method": "diagnose_synthesise"}).json()
    assert other["status"] == "ok" and other["cached"] is False and other["version"] == 1

    stored = client.get(f"/v1/rubrics/{first['rubric_id']}", headers=bearer(tenant.keys["trainer"]))
    assert stored.status_code == 200
    assert stored.json()["rubric"]["hard_rules"][0]["criterion"] == "states the correct result"
    assert stored.json()["project_id"] == tenant.project_a and stored.json()["version"] == 1
    outsider = client.get(f"/v1/rubrics/{first['rubric_id']}", headers=bearer(tenant.keys["admin_b"]))
    assert outsider.status_code == 404 and outsider.json()["error"]["field"] == "rubric_id"
    annotator = client.get(f"/v1/rubrics/{first['rubric_id']}", headers=bearer(tenant.keys["annotator"]))
    assert annotator.status_code == 403


def test_pairwise_judges_both_orders_and_is_order_invariant(llm: ScriptedLLMServer, client: TestClient,
                                                            tenant: Tenant) -> None:
    body = post(client, tenant, "/v1/judge/pairwise", PAIR).json()
    assert body["status"] == "ok" and body["verdict"] == "A" and body["agreement"] is True
    assert sorted(o["order"] for o in body["orders"]) == ["AB", "BA"] and body["rubric_id"]
    swapped = post(client, tenant, "/v1/judge/pairwise", {**PAIR, "response_a": PAIR["response_b"],
                                                          "response_b": PAIR["response_a"]}).json()
    assert swapped["verdict"] == "B" and swapped["rubric_cached"] is True
    with_text = post(client, tenant, "/v1/judge/pairwise", {**PAIR, "rubric_text": RUBRIC_TEXT}).json()
    assert with_text["verdict"] == "A" and with_text["rubric_id"] is None


def test_pointwise_scores_from_rule_checks(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    good = post(client, tenant, "/v1/judge/pointwise", {"instruction": "2+2?", "response": "4",
                                                        "rubric_text": RUBRIC_TEXT}).json()
    # two rules passed of two, principle 0.5: (2 + 0.5) / (2 + 1)
    assert good["status"] == "ok" and good["score"] == pytest.approx(2.5 / 3)
    bad = post(client, tenant, "/v1/judge/pointwise", {"instruction": "2+2?", "response": "5 WRONG",
                                                       "rubric_text": RUBRIC_TEXT}).json()
    assert bad["score"] == pytest.approx(0.5 / 3) and bad["rules_passed"] == 0
    rubric_id = post(client, tenant, "/v1/rubrics/generate", PAIR).json()["rubric_id"]
    by_id = post(client, tenant, "/v1/judge/pointwise", {"instruction": "2+2?", "response": "4",
                                                         "rubric_id": rubric_id}).json()
    assert by_id["status"] == "ok" and by_id["score"] == pytest.approx(1.5 / 2) and by_id["rubric_id"] == rubric_id


def test_unparseable_judge_output_is_reported_not_scored(llm: ScriptedLLMServer, client: TestClient,
                                                         tenant: Tenant) -> None:
    point = post(client, tenant, "/v1/judge/pointwise", {"instruction": "GARBAGE", "response": "4",
                                                         "rubric_text": RUBRIC_TEXT}).json()
    assert point["status"] == "invalid_input" and point["score"] is None and "unparseable" in point["error"]
    pair = post(client, tenant, "/v1/judge/pairwise", {**PAIR, "instruction": "GARBAGE",
                                                       "rubric_text": RUBRIC_TEXT}).json()
    assert pair["status"] == "invalid_input" and pair["verdict"] is None and pair["score_a"] is None


def test_synthesise_filter_and_sft_export(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    synth = post(client, tenant, "/v1/rubrics/synthesise", {
        "instruction": "2+2?", "diagnosis_a": json.loads(diagnosis_json(0)),
        "diagnosis_b": json.loads(diagnosis_json(2)), "expected_winner": "A", "store": True}).json()
    assert synth["status"] == "ok" and synth["rubric"]["pair_consistency_check"]["rubric_predicts"] == "A"
    assert synth["rubric_id"] and synth["version"] == 1
    pairs = [{"instruction": f"q{i}", "chosen": "fine", "rejected": "WRONG answer", "pair_id": f"p{i}"}
             for i in range(4)]
    pairs.append({"instruction": "q0", "chosen": "WRONG but chosen", "rejected": "fine", "pair_id": "bad"})
    report = post(client, tenant, "/v1/rubrics/filter", {"pairs": pairs}).json()
    # the mislabelled pair's rubric predicts the other winner: its whole instruction (q0) is dropped
    assert report["dropped_instructions"] == ["q0"]
    assert sorted(e["pair"]["pair_id"] for e in report["kept"]) == ["p1", "p2", "p3"]
    export = post(client, tenant, "/v1/rubrics/sft-export", {"examples": report["kept"], "seed": 3})
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in export.text.splitlines()]
    assert len(records) == 3 and [m["role"] for m in records[0]["messages"]] == ["system", "user", "assistant"]
    assert (export.headers["x-chosen-first"], export.headers["x-chosen-second"]) == ("2", "1")
    firsts = sum(section(r["messages"][1]["content"], "Response A") == "fine" for r in records)
    assert firsts == 2


def test_sft_export_from_pairs_fails_with_the_llm(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    pairs = [{"instruction": "GARBAGE q", "chosen": "fine", "rejected": "WRONG answer"}]
    unusable = post(client, tenant, "/v1/rubrics/sft-export", {"pairs": pairs})
    assert unusable.status_code == 502, unusable.text
    error = unusable.json()["error"]
    assert error["code"] == "upstream_bad_output" and error["field"] == "llm" and "unparseable" in error["message"]
    assert "retry-after" not in unusable.headers, "retrying the same pairs would not help"


def test_sft_export_is_a_503_with_retry_after_when_the_backend_fails(tenant: Tenant, client: TestClient,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.llm.scripted import ScriptedReply

    # The first pair's calls succeed, the second's fail: a partial export would silently lose a record.
    server = ScriptedLLMServer(lambda request: ScriptedReply.error(500) if "broken" in last_user_text(request)
                               else judge_script(request))
    _configure(monkeypatch, REWARDHUB_LLM_BASE_URL=server.start(), REWARDHUB_LLM_MODEL="judge",
               REWARDHUB_LLM_MAX_RETRIES="0", REWARDHUB_LLM_TIMEOUT_S="20")
    pairs = [{"instruction": "q1", "chosen": "fine", "rejected": "WRONG answer"},
             {"instruction": "q2", "chosen": "fine broken", "rejected": "WRONG answer"}]
    try:
        failed = post(client, tenant, "/v1/rubrics/sft-export", {"pairs": pairs})
    finally:
        server.stop()
    assert failed.status_code == 503, failed.text
    assert int(failed.headers["retry-after"]) >= 1
    error = failed.json()["error"]
    assert error["code"] == "upstream_unavailable" and error["field"] == "llm" and "1 of 2 pairs" in error["message"]


def test_jobs_and_rubrics_are_listed_a_page_at_a_time(llm: ScriptedLLMServer, client: TestClient,
                                                      tenant: Tenant) -> None:
    trainer = bearer(tenant.keys["trainer"])
    made = [post(client, tenant, "/v1/rubrics/generate", {**PAIR, "instruction": f"q{i}"}).json()["rubric_id"]
            for i in range(3)]
    first = client.get("/v1/rubrics", params={"limit": 2}, headers=trainer).json()
    rest = client.get("/v1/rubrics", params={"limit": 2, "cursor": first["next_cursor"]}, headers=trainer).json()
    assert [r["id"] for r in first["data"] + rest["data"]] == made and rest["next_cursor"] is None
    named = client.get("/v1/rubrics", params={"project_id": tenant.project_a}, headers=trainer).json()
    assert [r["id"] for r in named["data"]] == made
    foreign = client.get("/v1/rubrics", params={"project_id": tenant.project_b}, headers=trainer)
    assert foreign.status_code == 404 and foreign.json()["error"]["field"] == "project_id"
    assert client.get("/v1/rubrics", headers=bearer(tenant.keys["admin_b"])).json()["data"] == []

    item = {"instruction": "2+2?", "response": "4", "rubric_text": RUBRIC_TEXT}
    job_ids = [post(client, tenant, "/v1/jobs", {"kind": "judge_pointwise", "items": [item]}).json()["id"]
               for _ in range(2)]
    for job_id in job_ids:
        jobs.wait_local(job_id, timeout_s=60)
    page = client.get("/v1/jobs", params={"limit": 1}, headers=trainer).json()
    last = client.get("/v1/jobs", params={"cursor": page["next_cursor"]}, headers=trainer).json()
    assert [j["id"] for j in page["data"] + last["data"]] == job_ids and last["next_cursor"] is None
    assert all(j["results"] is None and j["state"] == "succeeded" for j in page["data"] + last["data"])
    bad = client.get("/v1/jobs", params={"cursor": "x"}, headers=trainer)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"


def test_job_runs_a_batch_with_progress(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    items = [{"instruction": "GARBAGE" if i == 2 else "2+2?", "response": "4" if i % 2 else "5 WRONG",
              "rubric_text": RUBRIC_TEXT} for i in range(6)]
    created = post(client, tenant, "/v1/jobs", {"kind": "judge_pointwise", "items": items})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["total"] == 6
    jobs.wait_local(job_id, timeout_s=60)
    body = client.get(f"/v1/jobs/{job_id}", headers=bearer(tenant.keys["trainer"])).json()
    assert body["state"] == "succeeded" and body["done"] == 6 and body["progress"] == 1.0
    assert [r["status"] for r in body["results"]] == ["ok", "ok", "invalid_input", "ok", "ok", "ok"]
    assert body["summary"]["parse_rate"] == pytest.approx(5 / 6)
    assert body["results"][1]["score"] == pytest.approx(2.5 / 3)
    hidden = client.get(f"/v1/jobs/{job_id}", headers=bearer(tenant.keys["admin_b"]))
    assert hidden.status_code == 404


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/judge/pointwise", {"instruction": "q", "response": "r"}, "rubric"),
    ("/v1/judge/pointwise", {"instruction": " ", "response": "r", "rubric_text": "x"}, "instruction"),
    ("/v1/judge/pointwise", {"instruction": "q", "response": "r", "rubric_text": "Principles:\n"}, "rubric_text"),
    ("/v1/judge/pointwise", {"instruction": "q", "response": "r", "rubric_id": "nope"}, "rubric_id"),
    ("/v1/judge/pointwise", {"instruction": "q", "response": "r", "rubric": {"hard_rules": []}}, "rubric"),
    ("/v1/judge/pairwise", {"instruction": "q", "response_a": "a"}, "response_b"),
    ("/v1/judge/pairwise", {**PAIR, "rubric_text": "x", "rubric_id": "0" * 32}, "rubric_id"),
    ("/v1/rubrics/generate", {**PAIR, "method": "magic"}, "method"),
    ("/v1/rubrics/filter", {}, "pairs"),
    ("/v1/jobs", {"kind": "judge_pointwise", "items": [{"instruction": "q", "response": "r", "rubric_text": "x"},
                                                       {"instruction": "q", "rubric_text": "x"}]}, "items[1].response"),
    ("/v1/jobs", {"kind": "rank", "items": [{}]}, "kind"),
])
@SQLITE_ONLY
def test_bad_input_is_a_4xx_naming_the_field(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant, path: str,
                                             body: dict[str, Any], field: str) -> None:
    response = post(client, tenant, path, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_input", field), error


def test_unknown_rubric_id_is_not_found(llm: ScriptedLLMServer, client: TestClient, tenant: Tenant) -> None:
    response = post(client, tenant, "/v1/judge/pointwise", {"instruction": "q", "response": "r", "rubric_id": "0" * 32})
    assert response.status_code == 404 and response.json()["error"]["field"] == "rubric_id"
    assert client.get("/v1/jobs/" + "0" * 32, headers=bearer(tenant.keys["trainer"])).status_code == 404


# ----------------------------------------------------------------------------- unreachable backend
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@SQLITE_ONLY
def test_unreachable_backend_is_an_error_status_with_the_cause(tenant: Tenant, client: TestClient,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _configure(monkeypatch, REWARDHUB_LLM_BASE_URL=f"http://127.0.0.1:{_closed_port()}/v1",
               REWARDHUB_LLM_MAX_RETRIES="0", REWARDHUB_LLM_TIMEOUT_S="5")
    point = post(client, tenant, "/v1/judge/pointwise", {"instruction": "q", "response": "r",
                                                         "rubric_text": RUBRIC_TEXT}).json()
    assert point["status"] == "error" and "cannot connect" in point["error"] and point["score"] is None
    pair = post(client, tenant, "/v1/judge/pairwise", PAIR).json()
    assert pair["status"] == "error" and pair["error"].startswith("rubric generation failed")
    generated = post(client, tenant, "/v1/rubrics/generate", PAIR).json()
    assert generated["status"] == "error" and generated["rubric_id"] is None  # failures are not stored


@SQLITE_ONLY
def test_a_silent_backend_times_out_within_the_configured_limit(tenant: Tenant, client: TestClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.llm.scripted import ScriptedReply

    server = ScriptedLLMServer(lambda _request: ScriptedReply(text="late", delay_s=30))
    _configure(monkeypatch, REWARDHUB_LLM_BASE_URL=server.start(), REWARDHUB_LLM_MAX_RETRIES="0",
               REWARDHUB_LLM_TIMEOUT_S="0.3")
    try:
        point = post(client, tenant, "/v1/judge/pointwise", {"instruction": "q", "response": "r",
                                                             "rubric_text": RUBRIC_TEXT}).json()
    finally:
        server.stop()
    assert point["status"] == "timeout" and "timed out" in point["error"]


@SQLITE_ONLY
def test_no_backend_configured_is_an_error_status(tenant: Tenant, client: TestClient) -> None:
    body = post(client, tenant, "/v1/diagnose", {"instruction": "q", "response": "r"}).json()
    assert body["status"] == "error" and "no LLM backend configured" in body["error"]


# --------------------------------------------------------------------------------- tiny local model
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny_models import build_tiny_causal_lm

    return Path(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-judge"), seed=0))


@SQLITE_ONLY
def test_tiny_random_model_yields_parse_failures_never_scores(tiny_model_dir: Path, tenant: Tenant,
                                                              client: TestClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.llm.local import LocalTransformersBackend

    _configure(monkeypatch, REWARDHUB_LLM_LOCAL_MODEL_PATH=str(tiny_model_dir))
    assert isinstance(backends.judge_backend(), backends.TokenCap)  # a local model is built from settings
    # The same model with a short output budget keeps the test fast; random weights write nonsense anyway.
    # It comes in through the route's backend dependency, the way a test swaps the judge.
    tiny = backends.TokenCap(LocalTransformersBackend(tiny_model_dir, max_new_tokens=12), 12)
    client.app.dependency_overrides[backends.judge_backend] = lambda: tiny  # type: ignore[attr-defined]
    point = post(client, tenant, "/v1/judge/pointwise", {"instruction": "q", "response": "r",
                                                         "rubric_text": RUBRIC_TEXT}).json()
    assert point["status"] == "invalid_input" and point["score"] is None and point["raw_output"] is not None
    pair = post(client, tenant, "/v1/judge/pairwise", {**PAIR, "rubric_text": RUBRIC_TEXT}).json()
    assert pair["status"] == "invalid_input" and pair["verdict"] is None
    generated = post(client, tenant, "/v1/rubrics/generate", PAIR).json()
    assert generated["status"] == "invalid_input" and generated["rubric"] is None and generated["rubric_id"] is None


# ------------------------------------------------------------------------- /v1/rewards, rubric spec
@pytest.fixture
def embedded(llm: ScriptedLLMServer) -> Iterator[TestClient]:
    from rewardhub.embedded import build_embedded_app

    with TestClient(build_embedded_app()) as test_client:
        yield test_client


def test_rewards_with_a_rubric_spec_end_to_end(embedded: TestClient, tenant: Tenant) -> None:
    items = [{"id": "good", "prompt": "What is 2 + 2?", "completion": "4"},
             {"id": "bad", "prompt": [{"role": "user", "content": "What is 2 + 2?"}], "completion": "5 WRONG"},
             {"id": "garbled", "prompt": "GARBAGE", "completion": "4"},
             {"id": "no-prompt", "completion": "4"}]
    response = embedded.post("/v1/rewards", json={"spec": {"type": "rubric", "rubric": RUBRIC_TEXT}, "items": items},
                             headers=bearer(tenant.keys["trainer"]))
    assert response.status_code == 200, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    assert results["good"]["status"] == "ok" and results["good"]["score"] == pytest.approx(2.5 / 3)
    assert results["bad"]["status"] == "ok" and results["bad"]["score"] == pytest.approx(0.5 / 3)
    assert results["bad"]["sub_scores"]["rules_passed"] == 0.0
    assert results["garbled"]["status"] == "error" and results["garbled"]["score"] is None
    assert "unparseable" in results["garbled"]["details"]["reason"]
    assert results["no-prompt"]["status"] == "invalid_input" and results["no-prompt"]["score"] is None
    assert response.json()["summary"]["by_status"] == {"ok": 2, "invalid_input": 1, "timeout": 0, "error": 1}


def test_rewards_rubric_spec_bad_rubric_and_reference_mode(embedded: TestClient, tenant: Tenant) -> None:
    headers = bearer(tenant.keys["trainer"])
    item = {"id": "x", "prompt": "What is 2 + 2?", "completion": "4", "ground_truth": "5 WRONG"}
    bad_rubric = embedded.post("/v1/rewards", json={"spec": {"type": "rubric", "rubric": {"hard_rules": []}},
                                                    "items": [item]}, headers=headers).json()["results"][0]
    assert bad_rubric["status"] == "invalid_input" and bad_rubric["score"] is None
    assert bad_rubric["details"]["field"] == "rubric"
    reference = embedded.post("/v1/rewards", json={"spec": {"type": "rubric", "rubric": RUBRIC_TEXT,
                                                            "mode": "pairwise_reference"}, "items": [item]},
                              headers=headers).json()["results"][0]
    assert reference["status"] == "ok" and reference["score"] == 1.0 and reference["details"]["agreement"] is True
    streamed = embedded.post("/v1/rewards", json={"spec": {"type": "rubric", "rubric": RUBRIC_TEXT}, "stream": True,
                                                  "items": [item]}, headers=headers)
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert lines[0]["type"] == "result" and lines[0]["status"] == "ok" and lines[-1]["type"] == "summary"
    missing = embedded.post("/v1/rewards", json={"spec": {"type": "rubric"}, "items": [item]}, headers=headers)
    assert missing.status_code == 422 and missing.json()["error"]["field"].startswith("spec")
    nested = embedded.post("/v1/rewards", json={"spec": {"type": "multi", "graders": {"inner": {
        "type": "multi", "graders": {"r": {"type": "rubric", "rubric": RUBRIC_TEXT}}}}}, "items": [item]},
        headers=headers)
    assert nested.status_code == 422
    assert "outermost multi" in nested.json()["error"]["message"]


def test_rewards_multi_spec_gates_a_rubric_judge(embedded: TestClient, tenant: Tenant) -> None:
    """A format gate (pool) and a rubric judge (rubric_rm over HTTP) in one multi spec."""
    spec = {"type": "multi", "graders": {"format": {"type": "regex", "pattern": r"^\d"},
                                         "judge": {"type": "rubric", "rubric": RUBRIC_TEXT}},
            "weights": {"format": 1.0, "judge": 3.0}, "gates": {"format": 1.0}}
    items = [{"id": "good", "prompt": "What is 2 + 2?", "completion": "4"},
             {"id": "wrong", "prompt": "What is 2 + 2?", "completion": "5 WRONG"},
             {"id": "unformatted", "prompt": "What is 2 + 2?", "completion": "four"},
             {"id": "garbled", "prompt": "GARBAGE", "completion": "4"}]
    for stream in (False, True):
        response = embedded.post("/v1/rewards", json={"spec": spec, "items": items, "stream": stream},
                                 headers=bearer(tenant.keys["trainer"]))
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()] if stream else response.json()["results"]
        results = {r["id"]: r for r in lines if r.get("type", "result") == "result"}
        # (1 x 1 + 3 x 2.5/3) / 4 and (1 x 1 + 3 x 0.5/3) / 4: the judge's pointwise scores, weighted.
        assert results["good"]["status"] == "ok" and results["good"]["score"] == pytest.approx(3.5 / 4)
        assert results["good"]["sub_scores"] == {"format": 1.0, "judge": pytest.approx(2.5 / 3)}
        assert results["wrong"]["score"] == pytest.approx(1.5 / 4)
        # The gate zeroes the reward even though the judge liked the answer.
        assert results["unformatted"]["status"] == "ok" and results["unformatted"]["score"] == 0.0
        assert results["unformatted"]["details"]["failed_gates"] == ["format"]
        # An unparseable judge output leaves the sum undecided: error, no score.
        assert results["garbled"]["status"] == "error" and results["garbled"]["score"] is None
        assert results["garbled"]["details"]["undecided"] == ["judge"]

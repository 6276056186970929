"""Item-level problems are that item's ``invalid_input``; request-level ones a 4xx naming the field; never a 500.

Everything goes through the real HTTP stack (gateway → verifier in-process ASGI → grader pool).
Bodies are sent as ``json.dumps`` text (ASCII escapes), the only way a lone surrogate like
``"\\ud800"`` reaches a server, as it does from any JSON client. Persistence runs on PostgreSQL,
which rejects NUL characters in text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from rewardhub.embedded import build_embedded_app
from services.common.settings import reset_settings_cache
from tests.conftest import SQLITE_ONLY, LiveServer, Tenant, bearer, make_tenant

EXACT = {"type": "exact"}
DEEP = json.loads("[" * 900 + "]" * 900)


def _send(client: TestClient, tenant: Tenant, body: dict[str, Any] | str | bytes, path: str = "/v1/rewards") -> Any:
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, content=raw.encode() if isinstance(raw, str) else raw,
                       headers={**bearer(tenant.keys["trainer"]), "Content-Type": "application/json"})


def _item(item_id: str, completion: str = "yes", **fields: Any) -> dict[str, Any]:
    return {"id": item_id, "completion": completion, "ground_truth": "yes", **fields}


# One item per item-level problem, each with the reason it must be given, and two good items.
BAD_ITEMS: list[tuple[dict[str, Any], str]] = [
    (_item("nul", "the answer\x00 is yes"), "completion: contains a NUL character at position 10"),
    (_item("surrogate", "yes \ud800"), "completion: contains a lone surrogate (U+D800) at position 4"),
    (_item("long", "y" * 1001), "completion: is 1001 characters long; the limit is 1000"),
    (_item("prompt_nul", prompt="q\x00"), "prompt: contains a NUL character at position 1"),
    (_item("chat_surrogate", prompt=[{"role": "user", "content": "hi \udc80"}]), "prompt[0].content: contains a lone"),
    (_item("chat_long", prompt=[{"role": "user", "content": "q" * 600}, {"role": "user", "content": "q" * 600}]),
     "prompt: its messages hold 1208 characters"),
    (_item("deep", ground_truth=DEEP), "ground_truth: is nested more than 64 levels deep"),
    (_item("nan", ground_truth={"answer": [1.0, float("nan")]}), "ground_truth.answer[1]: nan is not a finite"),
    (_item("inf", ground_truth=float("inf")), "ground_truth: inf is not a finite number"),
    (_item("gt_nul", ground_truth="yes\x00"), "ground_truth: contains a NUL character at position 3"),
    (_item("big_gt", ground_truth="y" * 3000), "ground_truth: is 3002 bytes as JSON; the limit is 2000"),
    (_item("big_meta", metadata={"k": "v" * 600}), "metadata: is 608 bytes as JSON; the limit is 512"),
    (_item("meta_key", metadata={"k\ud800": 1}), "metadata: a key contains a lone surrogate"),
]
GOOD = [_item("good1"), _item("good2", "no")]


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"MAX_ITEM_CHARS": "1000", "MAX_GROUND_TRUTH_BYTES": "2000", "MAX_METADATA_BYTES": "512"}.items():
        monkeypatch.setenv(f"REWARDHUB_{name}", value)
    reset_settings_cache()


@pytest.fixture
def tenant(isolated_env: Path, small_limits: None) -> Tenant:
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(build_embedded_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def _mixed_batch() -> list[dict[str, Any]]:
    # The good items interleaved with the bad, so the merge back into request order is exercised.
    return [GOOD[0], *(item for item, _ in BAD_ITEMS[:7]), GOOD[1], *(item for item, _ in BAD_ITEMS[7:])]


def _check_results(results: list[dict[str, Any]], *, ordered: bool = True) -> None:
    by_id = {r["id"]: r for r in results}
    assert len(results) == len(by_id) == len(BAD_ITEMS) + 2
    if ordered:
        assert [r["id"] for r in results] == [item["id"] for item in _mixed_batch()]
    for item, reason in BAD_ITEMS:
        result = by_id[item["id"]]
        assert (result["status"], result["score"]) == ("invalid_input", None), result
        assert result["details"]["reason"].startswith(reason), result
    assert (by_id["good1"]["status"], by_id["good1"]["score"]) == ("ok", 1.0)
    assert (by_id["good2"]["status"], by_id["good2"]["score"]) == ("ok", 0.0)


def test_each_bad_item_gets_its_own_status_and_the_rest_is_graded(client: TestClient, tenant: Tenant) -> None:
    response = _send(client, tenant, {"spec": EXACT, "items": _mixed_batch()})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_results(body["results"])
    assert body["summary"]["by_status"] == {"ok": 2, "invalid_input": len(BAD_ITEMS), "timeout": 0, "error": 0}
    assert body["summary"]["mean_score"] == 0.5


def test_a_batch_of_only_bad_items_needs_no_grading(client: TestClient, tenant: Tenant) -> None:
    response = _send(client, tenant, {"spec": EXACT, "items": [BAD_ITEMS[0][0]], "stream": False})
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["invalid_input"]
    assert response.json()["summary"]["n"] == 1


def test_the_verifier_screens_items_itself(client: TestClient, tenant: Tenant) -> None:
    # /v1/grade is reachable on its own (another gateway version, a direct caller): same contract.
    response = _send(client, tenant, {"spec": EXACT, "items": _mixed_batch()}, path="/services/verifier/v1/grade")
    assert response.status_code == 200, response.text
    _check_results(response.json()["results"])
    with client.stream("POST", "/services/verifier/v1/grade",
                       content=json.dumps({"spec": EXACT, "items": _mixed_batch(), "stream": True}).encode(),
                       headers={**bearer(tenant.keys["trainer"]), "Content-Type": "application/json"}) as streamed:
        assert streamed.status_code == 200
        _check_results([json.loads(line) for line in streamed.iter_lines() if line], ordered=False)


def _persisted(request_id: str) -> dict[str, tuple[str, float | None, dict[str, Any]]]:
    from services.common.db import session_scope
    from services.gateway.models import RewardResultRecord

    with session_scope() as session:
        rows = session.scalars(select(RewardResultRecord).where(RewardResultRecord.request_id == request_id)).all()
        return {row.item_id: (row.status, row.score, row.details) for row in rows}


@pytest.mark.postgres
@pytest.mark.parametrize("stream", [False, True])
def test_persisted_batches_with_bad_items_on_postgres(postgres_tenant: Tenant, small_limits: None,
                                                      stream: bool) -> None:
    with TestClient(build_embedded_app(), raise_server_exceptions=False) as client:
        body: dict[str, Any] = {"spec": EXACT, "items": _mixed_batch(), "persist": True, "stream": stream}
        headers = {"Idempotency-Key": f"bad-input-{stream}"}
        response = client.post("/v1/rewards", content=json.dumps(body).encode(),
                               headers={**bearer(postgres_tenant.keys["trainer"]), **headers,
                                        "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        if stream:
            lines = [json.loads(line) for line in response.text.splitlines() if line]
            assert lines[-1]["type"] == "summary", lines[-1]
            _check_results([line for line in lines if line["type"] == "result"], ordered=False)
            request_id = lines[-1]["request_id"]
        else:
            _check_results(response.json()["results"])
            request_id = response.json()["request_id"]
        rows = _persisted(request_id)
        assert len(rows) == len(BAD_ITEMS) + 2
        assert rows["nul"][:2] == ("invalid_input", None) and "NUL" in rows["nul"][2]["reason"]
        assert rows["good1"][:2] == ("ok", 1.0)
        # The same key replays the stored answer (its fingerprint copes with the unserialisable items).
        again = client.post("/v1/rewards", content=json.dumps(body).encode(),
                            headers={**bearer(postgres_tenant.keys["trainer"]), **headers,
                                     "Content-Type": "application/json"})
        assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
        assert again.text == response.text
        # A different body under the same key is still told apart.
        changed = {**body, "items": [*body["items"][:-1], _item("meta_key", metadata={"k\ud801": 1})]}
        reused = client.post("/v1/rewards", content=json.dumps(changed).encode(),
                             headers={**bearer(postgres_tenant.keys["trainer"]), **headers,
                                      "Content-Type": "application/json"})
        assert reused.status_code == 409, reused.text


MULTI = {"type": "multi", "graders": {"a": EXACT, "b": {"type": "regex", "pattern": "y"}}}


@pytest.mark.parametrize(("body", "status", "field", "words"), [
    ({"spec": EXACT, "items": [_item("a"), _item("b"), _item("a"), _item("b"), _item("c")]}, 422, "items",
     "items: duplicate ids: a, b"),
    ('{"spec": {"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"a": NaN}}, "items": '
     '[{"id": "x", "completion": "y"}]}', 422, "spec.multi.weights.a", "finite"),
    ({"spec": {**MULTI, "weights": {"b": float("inf")}}, "items": [_item("x")]}, 422, "spec.multi.weights.b", "finite"),
    ({"spec": {**MULTI, "gates": {"a": float("-inf")}}, "items": [_item("x")]}, 422, "spec.multi.gates.a", "finite"),
    ({"spec": {"type": "json_schema", "schema": {"type": "number", "maximum": float("nan")}}, "items": [_item("x")]},
     422, "spec.schema.maximum", "not a finite number"),
    ({"spec": {"type": "rubric", "rubric": {"hard_rules": ["be \ud800 right"]}}, "items": [_item("x")]},
     422, "spec.rubric.hard_rules[0]", "lone surrogate"),
    ({"spec": {"type": "regex", "pattern": "\ud800"}, "items": [_item("x")]}, 422, "spec.regex.pattern", ""),
    ({"spec": {"type": "\ud800"}, "items": [_item("x")]}, 422, "spec", ""),
    ({"spec": EXACT, "items": [_item("\ud800")]}, 422, "items[0].id", ""),
    ({"spec": EXACT, "items": [_item("a\x00")]}, 422, "items[0].id", "NUL"),
    ({"spec": EXACT, "items": [_item("x")], "deadline_s": float("nan")}, 422, "deadline_s", ""),
    ('{"spec": {"type": "exact"}, "items": [{"id": "x", "completion": "y", "ground_truth": '
     + "[" * 5000 + "]" * 5000 + "}]}", 422, "body", "nested too deeply"),
    ('{"spec": {"type": "json_schema", "schema": ' + '{"allOf": [' * 400 + "{}" + "]}" * 400
     + '}, "items": [{"id": "x", "completion": "y"}]}', 422, "body", "nested too deeply"),
    (b'{"spec": {"type": "exact"}, "items": [{"id": "x", "completion": "\xff\xfe"}]}', 400, "body", "UTF-8"),
    ('{"spec": {"type": "exact"}, "items": [{"id": "x", "completion": "y"', 422, "body", ""),
])
def test_request_level_problems_are_4xx_naming_the_field(client: TestClient, tenant: Tenant, body: Any, status: int,
                                                         field: str, words: str) -> None:
    response = _send(client, tenant, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] is not None and error["field"].startswith(field), error
    assert words in error["message"], error


TEXT = st.one_of(
    st.text(max_size=40),  # any valid text
    # surrogates (hypothesis leaves category Cs out of its defaults) mixed with any other code points
    # (st.text drops them even from an alphabet that has them, so the characters are joined by hand)
    st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"]), st.just("\x00")), max_size=40).map("".join),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "\ufffe", "\U0010ffff", "yes", ""]),
    st.integers(990, 1010).map(lambda n: "y" * n),  # both sides of the 1000-character limit
    st.lists(st.sampled_from(["\x00", "\ud83d", "\ude00", "yes", "\n", "é"]), max_size=30).map("".join),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(completions=st.lists(TEXT, min_size=1, max_size=12), stream=st.booleans())
def test_arbitrary_completions_never_5xx_and_get_one_result_each(client: TestClient, tenant: Tenant,
                                                                 completions: list[str], stream: bool) -> None:
    items = [{"id": f"i{n}", "completion": text, "ground_truth": "yes"} for n, text in enumerate(completions)]
    response = _send(client, tenant, {"spec": EXACT, "items": items, "stream": stream})
    assert response.status_code == 200, response.text
    if stream:
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        assert lines[-1]["type"] == "summary", lines[-1]
        results = {line["id"]: line for line in lines[:-1]}
    else:
        results = {r["id"]: r for r in response.json()["results"]}
    assert sorted(results) == sorted(item["id"] for item in items)
    for item in items:
        text, result = item["completion"], results[item["id"]]
        # What the server decodes: JSON's \uD83D\uDE00 escapes are one character (😀); only a lone
        # surrogate stays one. (A surrogate pair in the Python string was a false "unusable" here.)
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        unusable = "\x00" in text or len(text) > 1000 or any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        assert result["status"] == ("invalid_input" if unusable else "ok"), (text, result)
        assert (result["score"] is None) == unusable


# ------------------------------------------------------------------ annotation prompts, rubric_rm judges
def _annotation_project(client: TestClient, tenant: Tenant) -> str:
    body = {"project_id": tenant.project_a, "name": "robust", "label_budget": 5, "rollouts_per_prompt": 2,
            "policy": "random"}
    response = client.post("/services/annotation/v1/annotation/projects", json=body,
                           headers=bearer(tenant.keys["admin"]))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.postgres
def test_annotation_prompts_and_steps_name_unstorable_text_on_postgres(postgres_tenant: Tenant) -> None:
    with TestClient(build_embedded_app(), raise_server_exceptions=False) as client:
        base = f"/services/annotation/v1/annotation/projects/{_annotation_project(client, postgres_tenant)}"
        group = {"prompt_id": "p", "prompt_text": "ok é", "answers": ["1", "2"], "completions": ["a", "b"]}
        cases: list[tuple[str, dict[str, Any], str, str]] = [
            ("prompts", {"prompts": [{"id": "p", "text": "ok"}, {"id": "q", "text": "bad \ud800"}]},
             "prompts[1].text", "lone surrogate"),
            ("prompts", {"prompts": [{"id": "p\x00", "text": "ok"}]}, "prompts[0].id", "NUL"),
            ("prompts", {"prompts": [{"id": "\udc00", "text": "ok"}]}, "prompts[0].id", "lone surrogate"),
            ("steps", {"step": 0, "groups": [{**group, "prompt_text": "q\x00"}]}, "groups[0].prompt_text", "NUL"),
            ("steps", {"step": 0, "groups": [{**group, "answers": ["1", "\ud800"]}]}, "groups[0].answers[1]",
             "lone surrogate"),
            ("steps", {"step": 0, "groups": [{**group, "completions": ["\ud800", "b"]}]}, "groups[0].completions[0]",
             "lone surrogate"),
            ("steps", {"step": 0, "groups": [{**group, "completions": ["a\x00", "b"]}]}, "groups[0].completions[0]",
             "NUL"),
        ]
        for path, body, field, words in cases:
            response = _send(client, postgres_tenant, body, path=f"{base}/{path}")
            assert response.status_code == 422, (field, response.text)
            error = response.json()["error"]
            assert error["field"] == field and words in error["message"], error
        # The clean versions are stored (on PostgreSQL) and accepted.
        assert _send(client, postgres_tenant, {"prompts": [{"id": "p", "text": "ok é"}]},
                     path=f"{base}/prompts").status_code == 200
        assert _send(client, postgres_tenant, {"step": 0, "groups": [group]}, path=f"{base}/steps").status_code == 200


@pytest.mark.parametrize(("path", "body", "field", "words"), [
    ("/v1/judge/pointwise", {"instruction": "q\ud800", "response": "r", "rubric_text": "x"}, "instruction",
     "lone surrogate"),
    ("/v1/judge/pointwise", {"instruction": "q\x00", "response": "r", "rubric_text": "x"}, "instruction", "NUL"),
    ("/v1/judge/pointwise", {"instruction": "q", "response": "\udfff", "rubric_text": "x"}, "response",
     "lone surrogate"),
    ("/v1/judge/pointwise", {"instruction": "q", "response": "r", "rubric_text": "rule \ud800"}, "rubric_text",
     "lone surrogate"),
    ("/v1/judge/pairwise", {"instruction": "\ud800", "response_a": "a", "response_b": "b"}, "instruction",
     "lone surrogate"),
    ("/v1/rubrics/generate", {"instruction": "q", "response_a": "a\x00", "response_b": "b"}, "response_a", "NUL"),
    ("/v1/rubrics/filter", {"pairs": [{"instruction": "q\ud800", "chosen": "a", "rejected": "b"}]},
     "pairs[0].instruction", "lone surrogate"),
])
def test_rubric_rm_judge_instructions_name_unusable_text(client: TestClient, tenant: Tenant, path: str,
                                                         body: dict[str, Any], field: str, words: str) -> None:
    response = _send(client, tenant, body, path=f"/services/rubric_rm{path}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error


# ------------------------------------------------------------------------------- the acceptance run
POISON = {0: "\x00", 1: "\ud800"}  # rollout n % 4 → what is appended to its completion


@pytest.mark.slow
@SQLITE_ONLY
def test_train_run_finishes_with_nul_and_surrogate_completions_counted(live_server: LiveServer, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`rewardhub train` against a live server whose rollouts include NUL characters and lone surrogates.

    The tiny random model cannot be made to emit those, so the test rewrites the rollouts on their way
    to the reward service (``trainer.rewards.reward_items``): half of each batch gets a NUL or a lone
    surrogate appended. The run must finish, with those items counted as ``invalid_input``.
    """
    from rewardhub.cli import app
    from trainer import rewards

    real = rewards.reward_items

    def poisoned(rows: Any, rollouts: Any) -> list[rewards.RewardItem]:
        items = real(rows, rollouts)
        return [rewards.RewardItem(id=item.id, prompt=item.prompt, completion=item.completion + POISON[n % 4],
                                   ground_truth=item.ground_truth, data_source=item.data_source)
                if n % 4 in POISON else item for n, item in enumerate(items)]

    monkeypatch.setattr(rewards, "reward_items", poisoned)
    monkeypatch.setenv("RH_CLI_KEY", live_server.tenant.keys["trainer"])
    (tmp_path / "digits.jsonl").write_text("\n".join(
        json.dumps({"prompt": [{"role": "user", "content": f"Say 7 ({i})"}], "reward_model": {"ground_truth": "7"}})
        for i in range(4)) + "\n")
    config = {"model": {"tiny": {"seed": 0}}, "dataset": "digits.jsonl", "output_dir": "run",
              "reward": {"spec": {"type": "regex", "pattern": r"[\s\S]"}, "url": live_server.url,
                         "api_key_env": "RH_CLI_KEY"},
              "group_size": 4, "prompts_per_step": 2, "max_steps": 2, "max_completion_length": 4,
              "learning_rate": 1e-3}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml")])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:  # 2 prompts x 4 rollouts a step; rollouts 0 and 1 of every 4 poisoned
        assert m["reward_invalid_input_count"] == 4.0, m
        assert m["reward_ok_count"] == 4.0 and m["reward_error_count"] == 0.0, m
        assert m["non_ok_count"] == 4.0 and m["non_ok_share"] == 0.5, m

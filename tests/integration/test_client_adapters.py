"""The Python client and the TRL / veRL adapters against a real server on a loopback port."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rewardhub.adapters import verl
from rewardhub.adapters.trl import AsyncTRLRewardFunction, TRLRewardFunction, completion_text
from rewardhub.client import AsyncRewardClient, RewardClient, RewardHubError, make_items
from tests.conftest import SQLITE_ONLY, LiveServer

MATH = {"type": "math"}


@SQLITE_ONLY
def test_sync_client_scores_and_marks_ungradeable_as_none(live_server: LiveServer) -> None:
    with RewardClient(live_server.url, live_server.tenant.keys["trainer"]) as client:
        batch = client.score(make_items(["\\boxed{2}", "\\boxed{3}", "\\boxed{7}"], ["2", "2", "not a number"]),
                             {"type": "numeric"})
    assert [r.status for r in batch.results][:2] == ["ok", "ok"]
    assert batch.scores[:2] == [1.0, 0.0]
    assert batch.results[2].status == "invalid_input" and batch.scores[2] is None


@SQLITE_ONLY
def test_async_client(live_server: LiveServer) -> None:
    async def run() -> list[float | None]:
        async with AsyncRewardClient(live_server.url, live_server.tenant.keys["trainer"]) as client:
            return (await client.score(make_items(["\\boxed{1/2}"], ["0.5"]), MATH)).scores

    assert asyncio.run(run()) == [1.0]


@SQLITE_ONLY
def test_client_errors_carry_code_and_field(live_server: LiveServer) -> None:
    with RewardClient(live_server.url, live_server.tenant.keys["trainer"]) as client, \
            pytest.raises(RewardHubError) as raised:
        client.score([{"id": "a"}], MATH)
    assert raised.value.status_code == 422 and raised.value.field == "items[0].completion"


def test_client_retries_only_transient_failures() -> None:
    calls: list[str] = []

    def flaky_server_double(request: httpx.Request) -> httpx.Response:
        """Test double: answers 503 twice, then a valid batch; records the idempotency keys it saw."""
        calls.append(request.headers["idempotency-key"])
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"code": "upstream_unavailable", "message": "busy",
                                                       "field": None}})
        return httpx.Response(200, json={"request_id": "r", "spec_ref": "inline", "summary": {},
                                         "results": [{"id": "0", "score": 1.0, "status": "ok"}]})

    client = RewardClient("http://double", "k", transport=httpx.MockTransport(flaky_server_double))
    assert client.score(make_items(["x"]), MATH).scores == [1.0]
    assert len(calls) == 3 and len(set(calls)) == 1  # one idempotency key across the retries

    calls.clear()

    def bad_request_double(request: httpx.Request) -> httpx.Response:
        calls.append("x")
        return httpx.Response(422, json={"error": {"code": "invalid_input", "message": "no", "field": "items"}})

    client = RewardClient("http://double", "k", transport=httpx.MockTransport(bad_request_double))
    with pytest.raises(RewardHubError):
        client.score(make_items(["x"]), MATH)
    assert calls == ["x"]


@SQLITE_ONLY
def test_trl_reward_function(live_server: LiveServer) -> None:
    reward = TRLRewardFunction(MATH, base_url=live_server.url, api_key=live_server.tenant.keys["trainer"])
    assert reward.__name__ == "rewardhub_math"
    scores = reward(prompts=["p1", "p2"], completions=[[{"role": "assistant", "content": "\\boxed{4}"}], "\\boxed{5}"],
                    ground_truth=["4", "4"])
    assert scores == [1.0, 0.0]
    numeric = TRLRewardFunction({"type": "numeric"}, base_url=live_server.url, api_key=live_server.tenant.keys["trainer"])
    assert numeric(prompts=["p"], completions=["\\boxed{4}"], ground_truth=["four-ish"]) == [None]


TOOL_TURN = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": "lookup", "arguments": {}}}]},
             {"role": "tool", "name": "lookup", "content": "42"},
             {"role": "assistant", "content": "I cannot tell."}]


def test_completion_text_grades_assistant_text_only() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text(TOOL_TURN) == "I cannot tell."
    assert completion_text(TOOL_TURN, "assistant") == "I cannot tell."  # the empty tool-call turn adds nothing
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "The answer is "},
                                                {"type": "image", "image": "..."}, {"type": "text", "text": "4"}]}]
    assert completion_text(blocks) == "The answer is 4"
    two = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "\\boxed{9}"},
           {"role": "assistant", "content": "second"}]
    assert completion_text(two) == "second" and completion_text(two, "assistant") == "first\nsecond"
    assert completion_text([{"role": "tool", "content": "42"}]) == ""


@SQLITE_ONLY
def test_trl_tool_message_answer_is_not_the_models(live_server: LiveServer) -> None:
    reward = TRLRewardFunction({"type": "numeric"}, base_url=live_server.url,
                               api_key=live_server.tenant.keys["trainer"])
    assert reward(prompts=[[{"role": "user", "content": "answer?"}]], completions=[TOOL_TURN],
                  ground_truth=["42"]) == [0.0]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{42}"}]}]]
    assert reward(prompts=["p"], completions=blocks, ground_truth=["42"]) == [1.0]
    zero = TRLRewardFunction({"type": "numeric"}, base_url=live_server.url,
                             api_key=live_server.tenant.keys["trainer"], non_ok_reward=0.0)
    metrics: list[tuple[str, float]] = []
    assert zero(prompts=["p"], completions=["\\boxed{4}"], ground_truth=["four-ish"],
                log_metric=lambda name, value: metrics.append((name, value))) == [0.0]
    assert metrics == [("rewardhub_numeric/ok_rate", 0.0)]


@SQLITE_ONLY
def test_async_trl_reward_function_keeps_one_client_per_event_loop(live_server: LiveServer) -> None:
    reward = AsyncTRLRewardFunction(MATH, base_url=live_server.url, api_key=live_server.tenant.keys["trainer"])

    async def several() -> list[list[float | None]]:
        calls = [reward(prompts=["p"], completions=[[{"role": "assistant", "content": f"\\boxed{{{i}}}"}]],
                        ground_truth=[str(i)]) for i in range(5)]
        results = list(await asyncio.gather(*calls))
        results.append(await reward(prompts=["p"], completions=["\\boxed{1}"], ground_truth=["2"]))
        return results

    assert asyncio.run(several()) == [[1.0]] * 5 + [[0.0]]
    assert reward.clients_created == 1
    assert asyncio.run(several())[0] == [1.0]  # a new loop gets its own client, never the old loop's
    assert reward.clients_created == 2


@SQLITE_ONLY
def test_verl_compute_score_sync_batch_async(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx.Client() as http:
        http.post(f"{live_server.url}/v1/projects/{live_server.tenant.project_a}/reward-specs",
                  json={"name": "m", "spec": MATH}, headers={"Authorization": f"Bearer {live_server.tenant.keys['trainer']}"})
    monkeypatch.setenv("REWARDHUB_URL", live_server.url)
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    monkeypatch.setenv("REWARDHUB_SPEC", "m@1")
    verl._client.cache_clear()
    single = verl.compute_score("gsm8k", "\\boxed{12}", "12")
    assert single["score"] == 1.0 and single["status"] == "ok"
    batch = verl.compute_score_batch(["a", "b"], ["\\boxed{1}", "\\boxed{2}"], ["1", "3"])
    assert [b["score"] for b in batch] == [1.0, 0.0]
    assert asyncio.run(verl.compute_score_async("a", "\\boxed{3}", "3"))["score"] == 1.0
    verl._client.cache_clear()

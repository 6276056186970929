"""The rubric grader's own logic, with rubric_rm replaced by an httpx mock transport (issue 23, item 1).

mutmut found no unit test calling services/verifier/graders/rubric.py (only integration tests against
a live rubric_rm reached it). These pin what it sends, how it reads each answer and each failure, with
the expected request bodies and results typed in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request  # module level: FastAPI resolves the endpoint's annotations here
from pydantic import TypeAdapter

from rewardhub.reward_specs import RewardSpec, RubricSpec
from services.common.reward_api import ChatMessage, ItemResult, RewardItem
from services.verifier.graders import rubric

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)
RUBRIC_ID = "0123456789abcdef0123456789abcdef"


def spec(**fields: Any) -> RubricSpec:
    parsed = SPECS.validate_python({"type": "rubric", **({"rubric": "Be polite."} | fields)})
    assert isinstance(parsed, RubricSpec)
    return parsed


def item(prompt: Any = "Say hi.", completion: str = "Hello!", ground_truth: Any = None) -> RewardItem:
    return RewardItem(id="i1", prompt=prompt, completion=completion, ground_truth=ground_truth)


# --- instruction_of / request_for ----------------------------------------------------------------


def test_instruction_of_a_text_prompt_is_the_text() -> None:
    assert rubric.instruction_of("Say hi.") == "Say hi."
    assert rubric.instruction_of(None) == ""
    assert rubric.instruction_of([]) == ""


def test_a_single_user_message_is_used_as_it_is() -> None:
    assert rubric.instruction_of([ChatMessage(role="user", content="Say hi.")]) == "Say hi."
    assert rubric.instruction_of([{"role": "user", "content": "Say hi."}]) == "Say hi."


def test_a_chat_is_rendered_as_role_lines_skipping_empty_and_non_text_parts() -> None:
    chat = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="  "),
            ChatMessage(role="user", content=[{"type": "image"}]), ChatMessage(role="user", content="Say hi.")]
    assert rubric.instruction_of(chat) == "system: Be brief.\n\nuser: Say hi."
    assert rubric.instruction_of([{"role": "assistant", "content": "Hi."}]) == "assistant: Hi."
    assert rubric.instruction_of([{"content": "No role."}]) == ": No role."


def test_pointwise_request_with_rubric_text_an_object_or_an_id() -> None:
    assert rubric.request_for(spec(), item()) == (
        "/v1/judge/pointwise", {"instruction": "Say hi.", "response": "Hello!", "rubric_text": "Be polite."})
    as_object = {"hard_rules": ["No insults."], "principles": []}
    assert rubric.request_for(spec(rubric=as_object), item()) == (
        "/v1/judge/pointwise", {"instruction": "Say hi.", "response": "Hello!", "rubric": as_object})
    assert rubric.request_for(spec(rubric=None, rubric_id=RUBRIC_ID), item()) == (
        "/v1/judge/pointwise", {"instruction": "Say hi.", "response": "Hello!", "rubric_id": RUBRIC_ID})


def test_pairwise_request_sends_the_reference_as_response_b() -> None:
    assert rubric.request_for(spec(mode="pairwise_reference"), item(ground_truth="Hi there.")) == (
        "/v1/judge/pairwise", {"instruction": "Say hi.", "response_a": "Hello!", "response_b": "Hi there.",
                               "rubric_text": "Be polite."})


@pytest.mark.parametrize(("fields", "the_item", "reason"), [
    ({}, item(prompt="  "), "prompt: the rubric grader needs the item's prompt (the instruction the completion answers)"),
    ({}, item(completion=" \n"), "completion: is empty"),
    ({"mode": "pairwise_reference"}, item(ground_truth=None),
     "ground_truth: pairwise_reference needs the reference answer as a non-empty string"),
    ({"mode": "pairwise_reference"}, item(ground_truth="  "),
     "ground_truth: pairwise_reference needs the reference answer as a non-empty string"),
    ({"mode": "pairwise_reference"}, item(ground_truth=["a"]),
     "ground_truth: pairwise_reference needs the reference answer as a non-empty string"),
])
def test_what_cannot_be_judged_says_why(fields: dict[str, Any], the_item: RewardItem, reason: str) -> None:
    assert rubric.request_for(spec(**fields), the_item) == reason


# --- _from_judgment --------------------------------------------------------------------------------


def judged(data: dict[str, Any], **fields: Any) -> ItemResult:
    return rubric._from_judgment(spec(**fields), item(), data, started=0.0)


def test_a_pointwise_judgment_scores_and_reports_its_parts() -> None:
    result = judged({"status": "ok", "score": 0.75, "rules_passed": 3, "rules_total": 4, "principle_score": 0.5,
                     "rubric_id": RUBRIC_ID, "rule_checks": [{"rule": "r", "passed": True}]})
    assert (result.id, result.status, result.score) == ("i1", "ok", 0.75)
    assert result.sub_scores == {"rules_passed": 0.75, "principles": 0.5}
    assert result.details == {"rubric_id": RUBRIC_ID, "rule_checks": [{"rule": "r", "passed": True}]}


def test_a_pointwise_judgment_without_rules_or_principles_has_no_sub_scores() -> None:
    result = judged({"status": "ok", "score": 1.0, "rules_passed": 0, "rules_total": 0})
    assert (result.score, result.sub_scores, result.details) == (1.0, {}, {})
    assert judged({"status": "ok", "score": 0.0, "rules_passed": 0}).sub_scores == {}
    zero_principles = judged({"status": "ok", "score": 0.0, "rules_passed": 0, "principle_score": 0.0})
    assert zero_principles.sub_scores == {"principles": 0.0}


def test_a_pairwise_judgment_scores_response_a() -> None:
    result = judged({"status": "ok", "score_a": 0.5, "verdict": "tie", "agreement": False, "rubric_id": RUBRIC_ID},
                    mode="pairwise_reference")
    assert (result.status, result.score, result.sub_scores) == ("ok", 0.5, {})
    assert result.details == {"verdict": "tie", "agreement": False, "rubric_id": RUBRIC_ID}


@pytest.mark.parametrize(("data", "status", "reason"), [
    ({"status": "invalid_input", "error": "no JSON"}, "error", "judge output unparseable: no JSON"),
    ({"status": "timeout", "error": "judge took 120s"}, "timeout", "judge took 120s"),
    ({"status": "error", "error": "model crashed"}, "error", "model crashed"),
    ({"status": "weird"}, "error", "judge status 'weird'"),
    ({}, "error", "judge status None"),
])
def test_a_judgment_that_decided_nothing_has_no_score(data: dict[str, Any], status: str, reason: str) -> None:
    result = judged(data)
    assert (result.status, result.score, result.details) == (status, None, {"reason": reason})


# --- grade_item over a mock rubric_rm -------------------------------------------------------------


def grade_with(handler: Callable[[httpx.Request], httpx.Response], the_spec: RubricSpec | None = None,
               the_item: RewardItem | None = None, deadline: float | None = None) -> ItemResult:
    async def go() -> ItemResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://rubric-rm") as client:
            return await rubric.grade_item(client, the_spec or spec(), the_item or item(), deadline)
    return asyncio.run(go())


def test_grade_item_posts_the_request_and_reads_the_judgment() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"status": "ok", "score": 1.0, "rules_passed": 2, "rules_total": 2})

    result = grade_with(handler)
    assert seen == [("/v1/judge/pointwise", {"instruction": "Say hi.", "response": "Hello!",
                                              "rubric_text": "Be polite."})]
    assert (result.status, result.score, result.sub_scores) == ("ok", 1.0, {"rules_passed": 1.0})
    assert result.elapsed_ms >= 0.0


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError("rubric_rm must not be called")


def test_an_item_that_cannot_be_judged_is_not_sent() -> None:
    result = grade_with(never_called, the_item=item(completion=""))
    assert (result.status, result.score, result.details) == ("invalid_input", None,
                                                             {"reason": "completion: is empty"})


def test_a_passed_deadline_times_out_without_a_call() -> None:
    result = grade_with(never_called, deadline=0.0)  # time.monotonic() is far past 0
    assert (result.status, result.details) == ("timeout",
                                               {"reason": "the batch deadline passed before this item was judged"})


@pytest.mark.parametrize(("response", "reason", "field"), [
    (httpx.Response(422, json={"error": {"message": "rubric is empty", "field": "rubric_text"}}),
     "rubric is empty", "rubric_text"),
    (httpx.Response(404, json={"error": {"message": "no such rubric"}}), "no such rubric", None),
    (httpx.Response(400, text="not json"), "rubric_rm answered 400", None),
    (httpx.Response(499, json={"detail": "x"}), "rubric_rm answered 499", None),
    (httpx.Response(403, json={"error": "forbidden"}), "rubric_rm answered 403", None),
])
def test_a_4xx_is_invalid_input_with_rubric_rms_message(response: httpx.Response, reason: str,
                                                         field: str | None) -> None:
    result = grade_with(lambda request: response)
    expected = {"reason": reason} if field is None else {"reason": reason, "field": field}
    assert (result.status, result.score, result.details) == ("invalid_input", None, expected)


def test_a_5xx_is_an_error_with_the_start_of_the_body() -> None:
    result = grade_with(lambda request: httpx.Response(503, text="x" * 400))
    assert (result.status, result.details) == ("error", {"reason": "rubric_rm answered 503: " + "x" * 300})
    result = grade_with(lambda request: httpx.Response(500, text="boom"))
    assert result.details == {"reason": "rubric_rm answered 500: boom"}
    assert grade_with(lambda request: httpx.Response(399, text="odd")).details == {
        "reason": "rubric_rm answered 399: odd"}


def test_a_200_that_is_not_json_is_an_error() -> None:
    result = grade_with(lambda request: httpx.Response(200, text="<html>"))
    assert (result.status, result.details) == ("error", {"reason": "rubric_rm answered a body that is not JSON"})


def test_a_transport_failure_is_an_error_naming_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = grade_with(handler)
    assert (result.status, result.details) == ("error", {"reason": "rubric_rm unreachable: ConnectError: "
                                                                   "connection refused"})


def test_a_transport_timeout_is_a_timeout_naming_the_budget() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    result = grade_with(handler, the_spec=spec(timeout_s=7.5))
    assert (result.status, result.details) == ("timeout", {"reason": "the rubric judge did not answer within 7.5s"})


def test_the_http_timeout_is_the_budget_plus_the_margin() -> None:
    timeouts: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, json={"status": "ok", "score": 0.0})

    grade_with(handler, the_spec=spec(timeout_s=4.0))
    assert timeouts == [{"connect": 4.5, "read": 4.5, "write": 4.5, "pool": 4.5}]


# --- the batch and the stream through an in-process stand-in for rubric_rm ----------------------


@pytest.fixture
def judge(isolated_env: Path) -> Iterator[list[tuple[str | None, dict[str, Any]]]]:
    """rubric_rm mounted in-process as a stand-in scoring ``len(response) / 10``; records each call."""
    from services.common.service_client import register_local_app

    seen: list[tuple[str | None, dict[str, Any]]] = []
    app = FastAPI()

    @app.post("/v1/judge/pointwise")
    async def pointwise(request: Request) -> dict[str, Any]:
        body = await request.json()
        seen.append((request.headers.get("authorization"), body))
        return {"status": "ok", "score": len(body["response"]) / 10, "rules_passed": 1, "rules_total": 1}

    register_local_app("rubric_rm", app)
    yield seen


ITEMS = [RewardItem(id="a", prompt="Say hi.", completion="Hello"),
         RewardItem(id="b", prompt="Say hi.", completion=""),
         RewardItem(id="c", prompt="Say hi.", completion="Hi")]


def test_the_batch_answers_in_item_order_with_the_callers_key(judge: list[tuple[str | None, dict[str, Any]]]) -> None:
    results = asyncio.run(rubric.grade_rubric_batch(spec(max_concurrency=1), ITEMS, 30.0, "Bearer k1"))
    assert [(r.id, r.status, r.score) for r in results] == [("a", "ok", 0.5), ("b", "invalid_input", None),
                                                            ("c", "ok", 0.2)]
    assert sorted(judge, key=lambda call: call[1]["response"]) == [
        ("Bearer k1", {"instruction": "Say hi.", "response": "Hello", "rubric_text": "Be polite."}),
        ("Bearer k1", {"instruction": "Say hi.", "response": "Hi", "rubric_text": "Be polite."})]


def test_without_a_key_no_authorization_is_sent(judge: list[tuple[str | None, dict[str, Any]]]) -> None:
    asyncio.run(rubric.grade_rubric_batch(spec(), ITEMS[:1], None, None))
    assert [auth for auth, _ in judge] == [None]


def test_the_stream_yields_every_item(judge: list[tuple[str | None, dict[str, Any]]]) -> None:
    async def collect() -> dict[str, float | None]:
        return {r.id: r.score async for r in rubric.grade_rubric_stream(spec(), ITEMS, 30.0, "Bearer k1")}

    assert asyncio.run(collect()) == {"a": 0.5, "b": None, "c": 0.2}


def test_a_deadline_already_spent_times_every_item_out(judge: list[tuple[str | None, dict[str, Any]]]) -> None:
    results = asyncio.run(rubric.grade_rubric_batch(spec(), ITEMS[:1], 1e-9, None))
    assert [(r.status, r.details) for r in results] == [
        ("timeout", {"reason": "the batch deadline passed before this item was judged"})]
    assert judge == []


def test_no_rubric_rm_makes_every_item_an_error(isolated_env: Path) -> None:
    results = asyncio.run(rubric.grade_rubric_batch(spec(), ITEMS, None, None))
    reason = "service 'rubric_rm' has no URL (set REWARDHUB_RUBRIC_RM_URL) and is not mounted in-process"
    assert [(r.id, r.status, r.score, r.details) for r in results] == [
        (i.id, "error", None, {"reason": reason}) for i in ITEMS]


def test_an_undecided_result_has_no_score_and_drops_empty_details() -> None:
    import time

    result = rubric._result(item(), "error", time.perf_counter(), score=0.5, reason="x", field=None)
    assert (result.score, result.status, result.details, result.sub_scores) == (None, "error", {"reason": "x"}, {})
    assert 0.0 <= result.elapsed_ms < 60_000.0  # measured from `started`, not from the clock's zero
    assert rubric._result(item(), "ok", 0.0, score=0.5).score == 0.5


def test_the_stream_forwards_the_key_and_the_deadline(judge: list[tuple[str | None, dict[str, Any]]]) -> None:
    async def collect(deadline_s: float | None) -> list[tuple[str, str]]:
        return [(r.id, r.status) async for r in rubric.grade_rubric_stream(spec(), ITEMS[:1], deadline_s, "Bearer k2")]

    assert asyncio.run(collect(30.0)) == [("a", "ok")]
    assert [auth for auth, _ in judge] == ["Bearer k2"]
    assert asyncio.run(collect(1e-9)) == [("a", "timeout")]
    assert len(judge) == 1  # the spent deadline sent nothing


def test_elapsed_ms_counts_from_started_in_milliseconds() -> None:
    import time

    result = rubric._result(item(), "ok", time.perf_counter() - 1.0, score=1.0)
    assert 1000.0 <= result.elapsed_ms < 61_000.0  # started one second ago

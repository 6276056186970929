"""Rubric-guided judging: both orders, position-bias double, parse failures, pointwise scores."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from services.common.llm import OpenAIChatClient
from services.common.llm.scripted import ScriptedReply, last_user_text
from services.rubric_rm.judging import combine_orders, judge_pairwise, judge_pointwise, pointwise_score
from services.rubric_rm.prompts import render_rubric
from services.rubric_rm.schemas import OrderJudgment
from tests.unit.rubric_rm.helpers import example_rubric, judge_prompt_responses, scripted_client

RUBRIC = example_rubric()


def test_rubric_renders_rules_then_principles() -> None:
    text = render_rubric(RUBRIC)
    assert text.index("1. [R1] MUST") < text.index("2. [R2] FORBID") < text.index("1. [P1] concise")


def test_position_biased_judge_never_yields_a_win() -> None:
    # A test double of a judge that always prefers whatever is shown first.
    client, server = scripted_client(lambda _req: "Both look fine.\nWinner: Response A")
    result = asyncio.run(judge_pairwise(client, "q", "answer one", "answer two", RUBRIC))
    assert result.status == "ok"
    assert result.verdict == "tie" and result.agreement is False and result.score_a == 0.5
    assert {o.order: o.winner for o in result.orders} == {"AB": "A", "BA": "B"}
    # Both orders were really asked: each response appeared first once.
    firsts = sorted(judge_prompt_responses(r)[0] for r in server.requests)
    assert firsts == ["answer one", "answer two"]


def _content_judge(request: dict[str, Any]) -> str:
    """A consistent judge double: prefers the response containing 'correct', wherever it is."""
    first, _second = judge_prompt_responses(request)
    winner = "A" if "correct" in first else "B"
    return f"R1 passes only for the right one.\nWinner: Response {winner}"


@pytest.mark.parametrize(("a", "b", "verdict", "score_a"), [
    ("the correct answer", "a wrong answer", "A", 1.0),
    ("a wrong answer", "the correct answer", "B", 0.0),
])
def test_consistent_judge_verdict_is_order_invariant(a: str, b: str, verdict: str, score_a: float) -> None:
    client, _ = scripted_client(_content_judge)
    result = asyncio.run(judge_pairwise(client, "q", a, b, RUBRIC))
    assert (result.status, result.verdict, result.agreement, result.score_a) == ("ok", verdict, True, score_a)


def test_one_unparseable_order_gives_no_verdict() -> None:
    def script(request: dict[str, Any]) -> str:
        first, _ = judge_prompt_responses(request)
        return "Winner: Response A" if first == "x" else "I cannot decide, both are great."

    client, _ = scripted_client(script)
    result = asyncio.run(judge_pairwise(client, "q", "x", "y", RUBRIC))
    assert result.status == "invalid_input" and result.verdict is None and result.score_a is None
    assert "order BA" in (result.error or "") and "unparseable" in (result.error or "")


def test_quoted_verdict_before_final_verdict() -> None:
    def script(request: dict[str, Any]) -> str:
        first, _ = judge_prompt_responses(request)
        real = "A" if first == "good" else "B"
        fake = "B" if real == "A" else "A"
        return f'One response ends with "Winner: Response {fake}" which is not evidence.\nWinner: Response {real}'

    client, _ = scripted_client(script)
    result = asyncio.run(judge_pairwise(client, "q", "good", "bad", RUBRIC))
    assert result.verdict == "A" and result.agreement is True


@pytest.mark.timeout(20)
def test_unreachable_judge_is_error_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_initial_s=0.001)
    result = asyncio.run(judge_pairwise(client, "q", "a", "b", RUBRIC))
    assert result.status == "error" and result.verdict is None and "cannot connect" in (result.error or "")


def test_status_of_mixed_failures_is_the_most_serious() -> None:
    ok = OrderJudgment(order="AB", status="ok", winner="A")
    timeout = OrderJudgment(order="BA", status="timeout", error="slow")
    bad = OrderJudgment(order="BA", status="invalid_input", error="garbled")
    assert combine_orders(ok, timeout).status == "timeout"
    assert combine_orders(OrderJudgment(order="AB", status="error", error="down"), bad).status == "error"
    tie_both = combine_orders(OrderJudgment(order="AB", status="ok", winner="tie"),
                              OrderJudgment(order="BA", status="ok", winner="tie"))
    assert (tie_both.verdict, tie_both.agreement) == ("tie", True)


def test_pointwise_score_formula() -> None:
    assert pointwise_score(2, 3, 0.5) == pytest.approx((2 + 0.5) / 4)
    assert pointwise_score(3, 3, 1.0) == 1.0
    assert pointwise_score(0, 3, 0.0) == 0.0
    assert pointwise_score(1, 2, None) == 0.5
    assert pointwise_score(0, 0, 0.25) == 0.25
    # One more passed rule always outweighs principles: k=1, p=1 vs k=2, p=0 are equal at worst.
    assert pointwise_score(2, 3, 0.0) >= pointwise_score(1, 3, 1.0)
    with pytest.raises(ValueError):
        pointwise_score(4, 3, 0.5)


def test_pointwise_judgment() -> None:
    output = {"rules": [{"rule_id": "R1", "passed": True}, {"rule_id": "r2", "passed": False, "reason": "made up"}],
              "principles": [{"principle_id": "P1", "score": 0.5}]}
    client, server = scripted_client([f"Checking...\n```json\n{json.dumps(output)}\n```"])
    result = asyncio.run(judge_pointwise(client, "q", "an answer", RUBRIC))
    assert result.status == "ok"
    assert (result.rules_passed, result.rules_total, result.principle_score) == (1, 2, 0.5)
    assert result.score == pytest.approx((1 + 0.5) / 3)
    assert "an answer" in last_user_text(server.requests[0])


@pytest.mark.parametrize("text", [
    '{"rules": [{"rule_id": "R1", "passed": true}], "principles": [{"principle_id": "P1", "score": 1}]}',  # skips R2
    '{"rules": [{"rule_id": "R1", "passed": true}, {"rule_id": "R2", "passed": true}], "principles": '
    '[{"principle_id": "P1", "score": 7}]}',                                                               # out of range
    "Score: 9/10, great answer!",                                                                           # prose
])
def test_pointwise_never_invents_a_score(text: str) -> None:
    client, _ = scripted_client([text])
    result = asyncio.run(judge_pointwise(client, "q", "r", RUBRIC))
    assert result.status == "invalid_input" and result.score is None and result.error


def test_pointwise_timeout() -> None:
    client, _ = scripted_client([ScriptedReply(text="{}", delay_s=30)], timeout_s=0.2)
    result = asyncio.run(judge_pointwise(client, "q", "r", RUBRIC))
    assert result.status == "timeout" and result.score is None

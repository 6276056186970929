"""CDRRM step 4: rubric-guided judgment, pairwise (order-invariant) and pointwise (a scalar reward).

Pairwise: the judge sees the pair in both orders, (A, B) and (B, A). Each order's verdict is mapped
back to the caller's labels; the final verdict is the common answer when both orders agree and a
tie when they do not, so a judge that always picks the first position can never produce a win.
Pointwise: the judge checks each hard rule and rates each principle; the score is computed here
(:func:`pointwise_score`), never taken from the model.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from services.common.llm.structured import parse_structured
from services.common.llm.types import ChatBackend, LLMBackendError
from services.rubric_rm import prompts
from services.rubric_rm.parsing import parse_pairwise_verdict
from services.rubric_rm.pipeline import backend_error_status
from services.rubric_rm.schemas import (
    OrderJudgment,
    PairwiseJudgment,
    PointwiseJudgment,
    PointwiseOutput,
    Rubric,
    Status,
    Verdict,
)

JUDGE_MAX_TOKENS = 1024
SCORE_OF_VERDICT: dict[Verdict, float] = {"A": 1.0, "B": 0.0, "tie": 0.5}
# When orders fail in different ways, report the most serious status.
_STATUS_RANK: dict[Status, int] = {"ok": 0, "invalid_input": 1, "timeout": 2, "error": 3}


def _swap(verdict: Verdict) -> Verdict:
    return {"A": "B", "B": "A", "tie": "tie"}[verdict]  # type: ignore[return-value]


async def judge_one_order(backend: ChatBackend, instruction: str, response_a: str, response_b: str, rubric: Rubric,
                          order: Literal["AB", "BA"]) -> OrderJudgment:
    """Judge one presentation order; the verdict is returned in the caller's labels."""
    first, second = (response_a, response_b) if order == "AB" else (response_b, response_a)
    try:
        result = await backend.chat(prompts.pairwise_messages(instruction, first, second, rubric),
                                    max_tokens=JUDGE_MAX_TOKENS)
    except LLMBackendError as exc:
        return OrderJudgment(order=order, status=backend_error_status(exc), error=str(exc))
    parsed = parse_pairwise_verdict(result.text)
    if parsed.winner is None:
        return OrderJudgment(order=order, status="invalid_input", error=f"judge output unparseable: {parsed.error}",
                             raw_output=result.text)
    winner = parsed.winner if order == "AB" else _swap(parsed.winner)
    return OrderJudgment(order=order, status="ok", winner=winner, raw_output=result.text)


def combine_orders(ab: OrderJudgment, ba: OrderJudgment) -> PairwiseJudgment:
    """Order-invariant verdict from the two orders (both already in the caller's labels).

    both ok, same winner → that winner, agreement True; both ok, different → "tie", agreement False;
    any order not ok → no verdict, the most serious status and its error.
    """
    orders = [ab, ba]
    failed = [o for o in orders if o.status != "ok"]
    if failed:
        worst = max(failed, key=lambda o: _STATUS_RANK[o.status])
        return PairwiseJudgment(status=worst.status, orders=orders,
                                error="; ".join(f"order {o.order}: {o.error}" for o in failed))
    assert ab.winner is not None and ba.winner is not None
    agreement = ab.winner == ba.winner
    verdict: Verdict = ab.winner if agreement else "tie"
    return PairwiseJudgment(status="ok", verdict=verdict, agreement=agreement, score_a=SCORE_OF_VERDICT[verdict],
                            orders=orders)


async def judge_pairwise(backend: ChatBackend, instruction: str, response_a: str, response_b: str,
                         rubric: Rubric) -> PairwiseJudgment:
    """Judge the pair in both orders concurrently and combine (see :func:`combine_orders`)."""
    ab, ba = await asyncio.gather(
        judge_one_order(backend, instruction, response_a, response_b, rubric, "AB"),
        judge_one_order(backend, instruction, response_a, response_b, rubric, "BA"))
    return combine_orders(ab, ba)


def pointwise_score(rules_passed: int, rules_total: int, principle_score: float | None) -> float:
    """Scalar reward in [0, 1]: hard rules decide, principles only break ties.

    With n rules and k passed and p ∈ [0, 1] the mean principle score:
    ``(k + p) / (n + 1)`` when both exist — one more passed rule always outweighs any principle
    score; ``k / n`` with rules only; ``p`` with principles only.
    """
    if rules_total < 0 or not 0 <= rules_passed <= rules_total:
        raise ValueError(f"rules_passed must be in [0, rules_total], got {rules_passed}/{rules_total}")
    if principle_score is not None and not 0.0 <= principle_score <= 1.0:
        raise ValueError(f"principle_score must be in [0, 1], got {principle_score}")
    if rules_total == 0:
        if principle_score is None:
            raise ValueError("a rubric with no hard rules needs principle scores")
        return principle_score
    if principle_score is None:
        return rules_passed / rules_total
    return (rules_passed + principle_score) / (rules_total + 1)


def _norm_id(value: str) -> str:
    return value.strip().upper()


async def judge_pointwise(backend: ChatBackend, instruction: str, response: str, rubric: Rubric) -> PointwiseJudgment:
    """Score one response against ``rubric``; a judge output that skips a rule is a parse failure."""
    try:
        result = await backend.chat(prompts.pointwise_messages(instruction, response, rubric),
                                    max_tokens=JUDGE_MAX_TOKENS)
    except LLMBackendError as exc:
        return PointwiseJudgment(status=backend_error_status(exc), error=str(exc))
    parsed = parse_structured(result.text, PointwiseOutput, schema_name="PointwiseOutput")
    if parsed.value is None:
        return PointwiseJudgment(status="invalid_input", error=f"judge output unparseable: {parsed.error}",
                                 raw_output=result.text)
    checks = {_norm_id(c.rule_id): c for c in parsed.value.rules}
    missing = [r.rule_id for r in rubric.hard_rules if _norm_id(r.rule_id) not in checks]
    scores = {_norm_id(p.principle_id): p.score for p in parsed.value.principles}
    missing += [p.principle_id for p in rubric.principles if _norm_id(p.principle_id) not in scores]
    if missing:
        return PointwiseJudgment(status="invalid_input", raw_output=result.text,
                                 error=f"judge output skipped rubric items: {', '.join(missing)}")
    rule_checks = [checks[_norm_id(r.rule_id)] for r in rubric.hard_rules]
    passed = sum(c.passed for c in rule_checks)
    principle = (sum(scores[_norm_id(p.principle_id)] for p in rubric.principles) / len(rubric.principles)
                 if rubric.principles else None)
    score = pointwise_score(passed, len(rubric.hard_rules), principle)
    return PointwiseJudgment(status="ok", score=score, rules_passed=passed, rules_total=len(rubric.hard_rules),
                             principle_score=principle, rule_checks=rule_checks, raw_output=result.text)

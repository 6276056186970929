"""The ``rubric`` grader: an LLM judge scores a completion against a rubric, via the rubric_rm service.

It runs in the verifier's event loop (not the process pool: it waits on HTTP, it does not
compute) and talks to rubric_rm only over HTTP (``service_client``), with the caller's API key,
so rubric_rm applies the caller's project scope. Statuses:

- the judge answered and its output parsed → ``ok`` with the score in [0, 1];
- the judge's output could not be parsed → ``error`` (no score: nothing was decided);
- rubric_rm rejected the request (a bad rubric, an unknown rubric id, bad text) → ``invalid_input``;
- the judge or rubric_rm did not answer in time → ``timeout``; unreachable / failed → ``error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from rewardhub.reward_specs import RubricSpec
from services.common.reward_api import ItemResult, RewardItem
from services.common.service_client import service_client
from services.verifier.completion_order import as_finished

# Time kept back from an item's budget so rubric_rm's own timeout answer can still arrive.
_MARGIN_S = 0.5


def instruction_of(prompt: Any) -> str:
    """The instruction a completion answers: the prompt text, or the chat rendered as ``role: content`` lines
    (a single user message is used as it is)."""
    if isinstance(prompt, str):
        return prompt
    messages = [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in prompt or []]
    texts = [(str(m.get("role", "")), str(m["content"])) for m in messages
             if isinstance(m.get("content"), str) and m["content"].strip()]
    if len(texts) == 1 and texts[0][0] == "user":
        return texts[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in texts)


def _rubric_source(spec: RubricSpec) -> dict[str, Any]:
    if spec.rubric_id is not None:
        return {"rubric_id": spec.rubric_id}
    if isinstance(spec.rubric, str):
        return {"rubric_text": spec.rubric}
    return {"rubric": spec.rubric}


def request_for(spec: RubricSpec, item: RewardItem) -> tuple[str, dict[str, Any]] | str:
    """(path, body) of the rubric_rm call for ``item``, or why the item cannot be judged."""
    instruction = instruction_of(item.prompt)
    if not instruction.strip():
        return "prompt: the rubric grader needs the item's prompt (the instruction the completion answers)"
    if not item.completion.strip():
        return "completion: is empty"
    if spec.mode == "pointwise":
        return "/v1/judge/pointwise", {"instruction": instruction, "response": item.completion, **_rubric_source(spec)}
    if not isinstance(item.ground_truth, str) or not item.ground_truth.strip():
        return "ground_truth: pairwise_reference needs the reference answer as a non-empty string"
    return "/v1/judge/pairwise", {"instruction": instruction, "response_a": item.completion,
                                  "response_b": item.ground_truth, **_rubric_source(spec)}


def _result(item: RewardItem, status: str, started: float, *, score: float | None = None,
            sub_scores: dict[str, float] | None = None, **details: Any) -> ItemResult:
    return ItemResult(id=item.id, score=score if status == "ok" else None, status=status,
                      sub_scores=sub_scores or {}, details={k: v for k, v in details.items() if v is not None},
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 3))


def _from_judgment(spec: RubricSpec, item: RewardItem, data: dict[str, Any], started: float) -> ItemResult:
    status = data.get("status")
    if status == "ok":
        if spec.mode == "pointwise":
            total = data.get("rules_total") or 0
            sub = {"rules_passed": data["rules_passed"] / total} if total else {}
            if data.get("principle_score") is not None:
                sub["principles"] = data["principle_score"]
            return _result(item, "ok", started, score=data["score"], sub_scores=sub, rubric_id=data.get("rubric_id"),
                           rule_checks=data.get("rule_checks"))
        return _result(item, "ok", started, score=data["score_a"], verdict=data.get("verdict"),
                       agreement=data.get("agreement"), rubric_id=data.get("rubric_id"))
    if status == "invalid_input":
        # rubric_rm validated the request; what it could not parse is the judge's own output.
        return _result(item, "error", started, reason=f"judge output unparseable: {data.get('error')}")
    if status == "timeout":
        return _result(item, "timeout", started, reason=str(data.get("error")))
    return _result(item, "error", started, reason=str(data.get("error") or f"judge status {status!r}"))


async def grade_item(client: httpx.AsyncClient, spec: RubricSpec, item: RewardItem,
                     deadline: float | None) -> ItemResult:
    started = time.perf_counter()
    planned = request_for(spec, item)
    if isinstance(planned, str):
        return _result(item, "invalid_input", started, reason=planned)
    path, body = planned
    budget = spec.timeout_s if deadline is None else min(spec.timeout_s, deadline - time.monotonic())
    if budget <= 0:
        return _result(item, "timeout", started, reason="the batch deadline passed before this item was judged")
    try:
        async with asyncio.timeout(budget):
            response = await client.post(path, json=body, timeout=budget + _MARGIN_S)
    except (TimeoutError, httpx.TimeoutException):
        return _result(item, "timeout", started, reason=f"the rubric judge did not answer within {budget:.3g}s")
    except httpx.HTTPError as exc:
        return _result(item, "error", started, reason=f"rubric_rm unreachable: {type(exc).__name__}: {exc}")
    if 400 <= response.status_code < 500:
        try:
            error = response.json()["error"]
            reason, field = str(error["message"]), error.get("field")
        except (ValueError, KeyError, TypeError):
            reason, field = f"rubric_rm answered {response.status_code}", None
        return _result(item, "invalid_input", started, reason=reason, field=field)
    if response.status_code != 200:
        return _result(item, "error", started, reason=f"rubric_rm answered {response.status_code}: "
                                                       f"{response.text[:300]}")
    try:
        data = response.json()
    except ValueError:
        return _result(item, "error", started, reason="rubric_rm answered a body that is not JSON")
    return _from_judgment(spec, item, data, started)


async def _judged(spec: RubricSpec, items: list[RewardItem], deadline_s: float | None,
                  auth: str | None) -> AsyncIterator[tuple[int, ItemResult]]:
    """(position, result) for every item as it finishes, at most ``spec.max_concurrency`` at once."""
    deadline = time.monotonic() + deadline_s if deadline_s else None
    headers = {"Authorization": auth} if auth else {}
    try:
        client = service_client("rubric_rm", timeout_s=spec.timeout_s + _MARGIN_S, headers=headers)
    except RuntimeError as exc:  # rubric_rm has no URL and is not mounted in this process
        for index, item in enumerate(items):
            yield index, _result(item, "error", time.perf_counter(), reason=str(exc))
        return
    limit = asyncio.Semaphore(spec.max_concurrency)

    async def one(index: int, item: RewardItem) -> tuple[int, ItemResult]:
        async with limit:
            return index, await grade_item(client, spec, item, deadline)

    async with client:
        async for finished in as_finished(one(index, item) for index, item in enumerate(items)):
            yield finished


async def grade_rubric_stream(spec: RubricSpec, items: list[RewardItem], deadline_s: float | None,
                              auth: str | None) -> AsyncIterator[ItemResult]:
    """Each item's result as soon as it is judged (completion order)."""
    async for _, result in _judged(spec, items, deadline_s, auth):
        yield result


async def grade_rubric_batch(spec: RubricSpec, items: list[RewardItem], deadline_s: float | None,
                             auth: str | None) -> list[ItemResult]:
    """Every item's result, in item order."""
    results: list[ItemResult | None] = [None] * len(items)
    async for index, result in _judged(spec, items, deadline_s, auth):
        results[index] = result
    return [r for r in results if r is not None]

"""The ``rec`` grader: RecRM's hybrid recommendation reward, scored by the rec_rm service over HTTP.

Like the rubric grader it runs in the verifier's event loop (it waits on HTTP) and calls rec_rm's
``POST /v1/score`` with the caller's API key, so rec_rm applies the caller's project scope (the
catalog, logs, configuration and behaviour model of the key's project). Items go in batches of
``spec.batch_size``. Per item:

- rec_rm scored it → its hybrid ``status`` and ``score``; ``sub_scores`` are the dimensions that
  decided; ``details`` hold every dimension's status and evidence, ``vetoed_by`` and ``reason``;
- the item cannot be sent as given (a ``ground_truth`` that is not an object, a field rec_rm
  rejects for that item) → ``invalid_input`` naming the field; the rest of the batch is scored;
- rec_rm rejects the whole request (a bad ``config`` in the spec, an unknown catalog version) →
  every item ``invalid_input`` with rec_rm's message;
- rec_rm did not answer in time → ``timeout``; unreachable or failing → ``error``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from rewardhub.reward_specs import RecSpec
from services.common.reward_api import ItemResult, RewardItem
from services.common.service_client import service_client
from services.verifier.graders.rubric import instruction_of

_GROUND_TRUTH_KEYS = {"user_id", "context", "constraints", "schema", "n_items"}
_ITEM_FIELD = re.compile(r"^items\[(\d+)\]\.?(.*)$")


def score_item(item: RewardItem) -> dict[str, Any] | str:
    """rec_rm's item for ``item``, or why it cannot be scored."""
    truth = item.ground_truth if item.ground_truth is not None else {}
    if not isinstance(truth, dict):
        return "ground_truth: the rec grader takes an object {user_id, context, constraints, schema, n_items} or null"
    unknown = set(truth) - _GROUND_TRUTH_KEYS
    if unknown:
        return f"ground_truth: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(_GROUND_TRUTH_KEYS))})"
    body: dict[str, Any] = {"id": item.id, "query": instruction_of(item.prompt), "response": item.completion,
                            **{k: v for k, v in truth.items() if v is not None}}
    user = truth.get("user_id", item.metadata.get("user_id"))
    if user is not None:
        body["user_id"] = str(user)
    return body


def _result(item_id: str, status: str, started: float, *, score: float | None = None,
            sub_scores: dict[str, float] | None = None, **details: Any) -> ItemResult:
    return ItemResult(id=item_id, score=score if status == "ok" else None, status=status, sub_scores=sub_scores or {},
                      details={k: v for k, v in details.items() if v is not None},
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 3))


def _from_score(data: dict[str, Any], started: float, versions: dict[str, Any]) -> ItemResult:
    dimensions = data.get("dimensions") or {}
    sub = {name: float(d["score"]) for name, d in dimensions.items() if d.get("status") == "ok" and d.get("score") is not None}
    return _result(str(data["id"]), str(data.get("status")), started, score=data.get("score"), sub_scores=sub,
                   dimensions=dimensions, vetoed_by=data.get("vetoed_by") or None, reason=data.get("reason"), **versions)


def _error_of(response: httpx.Response) -> tuple[str, str | None]:
    try:
        error = response.json()["error"]
        return str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        return f"rec_rm answered {response.status_code}", None


async def _score_chunk(client: httpx.AsyncClient, spec: RecSpec, chunk: list[tuple[int, dict[str, Any]]],
                       started: float, results: dict[int, ItemResult]) -> None:
    """Score one batch; an item rec_rm rejects (422 naming items[i]) is its own invalid_input, the rest retried."""
    pending = list(chunk)
    while pending:
        body: dict[str, Any] = {"items": [b for _, b in pending], "timeout_s": spec.timeout_s}
        if spec.project_id is not None:
            body["project_id"] = spec.project_id
        if spec.dimensions is not None:
            body["dimensions"] = spec.dimensions
        if spec.catalog_version is not None:
            body["catalog_version"] = spec.catalog_version
        if spec.config is not None:
            body["config"] = spec.config
        try:
            response = await client.post("/v1/score", json=body, timeout=spec.timeout_s + 10)
        except httpx.TimeoutException:
            for index, b in pending:
                results[index] = _result(b["id"], "timeout", started,
                                         reason=f"rec_rm did not answer within {spec.timeout_s:.3g}s")
            return
        except httpx.HTTPError as exc:
            for index, b in pending:
                results[index] = _result(b["id"], "error", started, reason=f"rec_rm unreachable: {exc}")
            return
        if response.status_code == 200:
            data = response.json()
            versions = {k: data.get(k) for k in ("catalog_version", "config_version", "behaviour_model_version")}
            by_id = {str(r["id"]): r for r in data.get("results", [])}
            for index, b in pending:
                scored = by_id.get(b["id"])
                results[index] = (_from_score(scored, started, versions) if scored is not None else
                                  _result(b["id"], "error", started, reason="rec_rm returned no result for this item"))
            return
        reason, field = _error_of(response)
        match = _ITEM_FIELD.match(field or "")
        if response.status_code == 422 and match and int(match.group(1)) < len(pending):
            index, b = pending.pop(int(match.group(1)))
            inner = match.group(2)
            results[index] = _result(b["id"], "invalid_input", started, reason=reason,
                                     field=f"ground_truth.{inner}" if inner else "ground_truth")
            continue
        status = "invalid_input" if 400 <= response.status_code < 500 else "error"
        for index, b in pending:
            results[index] = _result(b["id"], status, started, reason=f"rec_rm: {reason}", field=field)
        return


async def grade_rec_batch(spec: RecSpec, items: list[RewardItem], deadline_s: float | None,
                          auth: str | None) -> list[ItemResult]:
    """Every item's result, in item order."""
    started = time.perf_counter()
    results: dict[int, ItemResult] = {}
    planned: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        body = score_item(item)
        if isinstance(body, str):
            results[index] = _result(item.id, "invalid_input", started, reason=body)
        else:
            planned.append((index, body))
    if planned:
        headers = {"Authorization": auth} if auth else {}
        timeout = spec.timeout_s if deadline_s is None else min(spec.timeout_s, deadline_s)
        bounded = spec.model_copy(update={"timeout_s": max(0.001, timeout)})
        try:
            client = service_client("rec_rm", timeout_s=bounded.timeout_s + 10, headers=headers)
        except RuntimeError as exc:  # rec_rm has no URL and is not mounted in this process
            for index, body in planned:
                results[index] = _result(body["id"], "error", started, reason=str(exc))
        else:
            async with client:
                for start in range(0, len(planned), spec.batch_size):
                    await _score_chunk(client, bounded, planned[start:start + spec.batch_size], started, results)
    return [results[index] for index in range(len(items))]

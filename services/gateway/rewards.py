"""`/v1/rewards`: resolve the spec, honour idempotency, fan the batch out to the verifier, persist."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.common.auth import Principal, choose_project, get_accessible_project
from services.common.db import session_scope
from services.common.errors import ApiError, UpstreamUnavailable
from services.common.reward_api import ItemResult, summarise
from services.common.service_client import service_client
from services.common.settings import get_settings
from services.gateway import idempotency, reward_specs_store
from services.gateway.models import RewardResultRecord
from services.gateway.schemas import RewardsRequest

ENDPOINT = "rewards"
NDJSON = "application/x-ndjson"


def _resolve_spec(principal: Principal, project_id: str, body: RewardsRequest) -> tuple[dict[str, Any], str]:
    if body.spec is not None and principal.can_access(project_id) and not principal.all_projects:
        # Hot path: the key's project list came from the database moments ago; no query needed.
        return body.spec.model_dump(mode="json"), "inline"
    with session_scope() as session:
        get_accessible_project(session, principal, project_id)
        if body.spec is not None:
            return body.spec.model_dump(mode="json"), "inline"
        record = reward_specs_store.resolve(session, project_id, body.spec_ref or "")
        return record.spec, f"{record.name}@{record.version}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (502, 503, 504)


def _verifier_deadline(deadline_s: float | None, received_at: float) -> float | None:
    """What is left of the caller's deadline, less a margin for relaying the results back.

    The caller's clock started before the gateway parsed the request and stops after the reply
    is encoded, so the verifier gets the remainder minus 5% (at most 2 s) for that return trip.
    """
    if deadline_s is None:
        return None
    remaining = deadline_s - (time.monotonic() - received_at) - min(2.0, 0.05 * deadline_s)
    return max(remaining, 0.001)


def _grade_payload(spec: dict[str, Any], body: RewardsRequest, stream: bool, received_at: float) -> dict[str, Any]:
    return {"spec": spec, "items": [item.model_dump(mode="json") for item in body.items],
            "deadline_s": _verifier_deadline(body.deadline_s, received_at), "stream": stream}


def _judges(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec's LLM judges: the spec itself, or the rubric parts of a multi (judged side by side)."""
    if spec.get("type") == "rubric":
        return [spec]
    if spec.get("type") == "multi":
        return [part for part in (spec.get("graders") or {}).values()
                if isinstance(part, dict) and part.get("type") == "rubric"]
    return []


def _client_timeout(body: RewardsRequest, spec: dict[str, Any]) -> float:
    """How long to wait for the verifier: its deadline, or a budget that grows with the batch."""
    # The verifier enforces the deadline; leave it room to answer with timeouts rather than cut it off.
    if body.deadline_s:
        return body.deadline_s + 30.0
    budget = get_settings().http_timeout_s + len(body.items) * 0.05
    for judge in _judges(spec):
        # LLM judgments: waves of max_concurrency items, each allowed the spec's per-item time.
        waves = math.ceil(len(body.items) / int(judge.get("max_concurrency", 8)))
        budget = max(budget, float(judge.get("timeout_s", 120.0)) * waves)
    return budget + 30.0


async def _post_grade(payload: dict[str, Any], auth: str, timeout_s: float) -> dict[str, Any]:
    settings = get_settings()
    async for attempt in AsyncRetrying(stop=stop_after_attempt(settings.http_max_retries + 1),
                                       wait=wait_exponential(multiplier=0.2, max=5),
                                       retry=retry_if_exception(_transient), reraise=True):
        with attempt:
            async with service_client("verifier", timeout_s=timeout_s, headers={"Authorization": auth}) as client:
                response = await client.post("/v1/grade", json=payload)
                if response.status_code in (502, 503, 504):
                    response.raise_for_status()
                if response.status_code >= 400:
                    raise _upstream_client_error(response)
                data: dict[str, Any] = response.json()
                return data
    raise AssertionError("unreachable")


def _upstream_client_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(error["message"], field=error.get("field"), code=error.get("code"),
                        status_code=response.status_code)
    except (ValueError, KeyError, TypeError):
        return ApiError(f"verifier answered {response.status_code}", status_code=502, code="upstream_error")


def _persist(project_id: str, request_id: str, spec_ref: str, results: list[ItemResult]) -> None:
    with session_scope() as session:
        session.add_all([RewardResultRecord(project_id=project_id, request_id=request_id, item_id=r.id,
                                            spec_ref=spec_ref, score=r.score, status=r.status,
                                            sub_scores=r.sub_scores, details=r.details, elapsed_ms=r.elapsed_ms)
                         for r in results])


async def score(principal: Principal, body: RewardsRequest, auth: str, idempotency_key: str | None) -> Response:
    received_at = time.monotonic()
    project_id = choose_project(principal, body.project_id)
    spec, spec_ref = await asyncio.to_thread(_resolve_spec, principal, project_id, body)
    key = idempotency_key or body.idempotency_key
    if key is not None:
        fingerprint = idempotency.request_fingerprint(
            body.model_dump(mode="json", exclude={"idempotency_key"}) | {"project_id": project_id})
        replay = await asyncio.to_thread(idempotency.claim, project_id, ENDPOINT, key, fingerprint)
        if replay is not None:
            media = NDJSON if body.stream else "application/json"
            return Response(replay.body, status_code=replay.status_code, media_type=media,
                            headers={"Idempotent-Replayed": "true"})
    request_id = uuid.uuid4().hex
    try:
        if body.stream:
            return StreamingResponse(_stream(project_id, request_id, spec, spec_ref, body, auth, key, received_at),
                                     media_type=NDJSON)
        started = time.perf_counter()
        graded = await _post_grade(_grade_payload(spec, body, stream=False, received_at=received_at), auth,
                                   _client_timeout(body, spec))
    except httpx.TransportError as exc:
        await _release(project_id, key)
        raise UpstreamUnavailable(f"the verifier service is unreachable: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        await _release(project_id, key)
        raise
    results = [ItemResult.model_validate(r) for r in graded["results"]]
    if body.persist:
        await asyncio.to_thread(_persist, project_id, request_id, spec_ref, results)
    content = {"request_id": request_id, "project_id": project_id, "spec_ref": spec_ref,
               "results": graded["results"], "summary": graded["summary"],
               "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}
    text = json.dumps(content)
    if key is not None:
        await asyncio.to_thread(idempotency.complete, project_id, ENDPOINT, key, 200, text)
    return Response(text, media_type="application/json")


async def _release(project_id: str, key: str | None) -> None:
    if key is not None:
        await asyncio.to_thread(idempotency.release, project_id, ENDPOINT, key)


async def _stream(project_id: str, request_id: str, spec: dict[str, Any], spec_ref: str, body: RewardsRequest,
                  auth: str, key: str | None, received_at: float) -> AsyncIterator[bytes]:
    """Relay the verifier's NDJSON results as they finish, then one summary line."""
    results: list[ItemResult] = []
    lines: list[str] = []
    started = time.perf_counter()
    try:
        async with service_client("verifier", timeout_s=_client_timeout(body, spec),
                                  headers={"Authorization": auth}) as client, \
                client.stream("POST", "/v1/grade", json=_grade_payload(spec, body, True, received_at)) as response:
            if response.status_code >= 400:
                await response.aread()
                error = _upstream_client_error(response)
                line = json.dumps({"type": "error", "error": {"code": error.code, "message": error.message,
                                                              "field": error.field}})
                lines.append(line)
                yield (line + "\n").encode()
                await _release(project_id, key)
                return
            async for raw in response.aiter_lines():
                if not raw.strip():
                    continue
                result = ItemResult.model_validate_json(raw)
                results.append(result)
                line = json.dumps({"type": "result", **result.model_dump(mode="json")})
                lines.append(line)
                yield (line + "\n").encode()
    except httpx.TransportError as exc:
        await _release(project_id, key)
        line = json.dumps({"type": "error", "error": {
            "code": "upstream_unavailable", "field": None,
            "message": f"the verifier stream broke after {len(results)} results: {type(exc).__name__}: {exc}"}})
        yield (line + "\n").encode()
        return
    if body.persist:
        await asyncio.to_thread(_persist, project_id, request_id, spec_ref, results)
    summary = json.dumps({"type": "summary", "request_id": request_id, "project_id": project_id,
                          "spec_ref": spec_ref, "summary": summarise(results).model_dump(mode="json"),
                          "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)})
    lines.append(summary)
    yield (summary + "\n").encode()
    if key is not None:
        await asyncio.to_thread(idempotency.complete, project_id, ENDPOINT, key, 200, "\n".join(lines) + "\n")


"""`/v1/rewards`: resolve the spec, honour idempotency, fan the batch out to the verifier, persist.

Idempotency (``Idempotency-Key`` header; the body's ``idempotency_key`` is a deprecated alias): the
key is claimed with a lease, the answer is stored together with the persisted results before it is
returned (or, streaming, before the closing summary line), and an attempt that dies leaves a claim
whose lease runs out, so a retry replays the stored answer or runs afresh, never waits forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.common import idempotency, metrics
from services.common.auth import Principal, choose_project, get_accessible_project
from services.common.db import session_scope, utcnow
from services.common.errors import ApiError, InvalidInput, UpstreamUnavailable, error_body
from services.common.reward_api import ItemResult, RewardItem, locate_json_problem, merge, screen, summarise
from services.common.service_client import service_client
from services.common.settings import get_settings
from services.gateway import reward_specs_store
from services.gateway.models import RewardResultRecord
from services.gateway.schemas import RewardsRequest

ENDPOINT = "rewards"
NDJSON = "application/x-ndjson"
JSON_HEADERS = {"Content-Type": "application/json"}
STORE_RETRY_AFTER_S = 1
DEPRECATED_FIELD_WARNING = '299 - "the body field idempotency_key is deprecated; send the Idempotency-Key header"'
log = logging.getLogger("rewardhub.gateway.rewards")


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


def _check_spec(body: RewardsRequest, spec: dict[str, Any]) -> None:
    """A spec that cannot travel as JSON (NaN, a lone surrogate, nested too deep) is a 422 naming where."""
    value: Any = spec
    if body.spec is not None:  # the Python values: the JSON dump would have turned NaN into null
        try:
            value = body.spec.model_dump(by_alias=True)
        except ValueError as exc:  # pydantic's own serialisation depth limit
            raise InvalidInput(f"spec: cannot be serialised: {exc}", field="spec") from exc
    found = locate_json_problem(value, "spec", max_depth=get_settings().max_json_depth, check_nul=False)
    if found is not None:
        raise InvalidInput(f"{found[0]}: {found[1]}", field=found[0])


def _grade_payload(spec: dict[str, Any], body: RewardsRequest, items: list[RewardItem], stream: bool,
                   received_at: float) -> bytes:
    """The verifier's request, as JSON bytes (``items``: the batch's gradable items)."""
    payload = {"spec": spec, "items": [item.model_dump(mode="json") for item in items],
               "deadline_s": _verifier_deadline(body.deadline_s, received_at), "stream": stream}
    try:
        # Screened items and a checked spec always encode; anything else is still the client's input.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidInput(f"body: cannot be forwarded for grading: {type(exc).__name__}: {exc}",
                           field="body") from exc


def _fingerprint_body(body: RewardsRequest) -> dict[str, Any]:
    """The request as JSON for its idempotency fingerprint (an ungradeable item may not serialise)."""
    return body.model_dump(mode="json", exclude={"idempotency_key", "items"}) | {
        "items": [item.fingerprint_dump() for item in body.items]}


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


async def _post_grade(payload: bytes, auth: str, timeout_s: float) -> dict[str, Any]:
    settings = get_settings()
    async for attempt in AsyncRetrying(stop=stop_after_attempt(settings.http_max_retries + 1),
                                       wait=wait_exponential(multiplier=0.2, max=5),
                                       retry=retry_if_exception(_transient), reraise=True):
        with attempt:
            async with service_client("verifier", timeout_s=timeout_s, headers={"Authorization": auth}) as client:
                response = await client.post("/v1/grade", content=payload, headers=JSON_HEADERS)
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


def _result_rows(project_id: str, request_id: str, spec_ref: str,
                 results: list[ItemResult]) -> list[RewardResultRecord]:
    return [RewardResultRecord(project_id=project_id, request_id=request_id, item_id=r.id, spec_ref=spec_ref,
                               score=r.score, status=r.status, sub_scores=r.sub_scores, details=r.details,
                               elapsed_ms=r.elapsed_ms) for r in results]


def _store(project_id: str, request_id: str, spec_ref: str, results: list[ItemResult] | None,
           held: idempotency.Claim | None, answer: str) -> idempotency.Stored | None:
    """Persist the results and store the idempotent answer in one transaction, before it is sent.

    Returns the answer another attempt stored first (a take-over race), with this one's rows rolled back.
    """
    if not results and held is None:
        return None
    try:
        with session_scope() as session:
            if results:
                session.add_all(_result_rows(project_id, request_id, spec_ref, results))
            if held is not None:
                idempotency.complete(held, 200, answer, session=session)
    except idempotency.AlreadyCompleted as exc:
        return exc.stored
    return None


def _storage_unavailable(exc: BaseException) -> JSONResponse:
    log.error("could not store a graded /v1/rewards answer: %s: %s", type(exc).__name__, exc)
    return JSONResponse(error_body("storage_unavailable", "the results were graded but could not be stored; "
                                   "nothing was saved, retry the request (with the same Idempotency-Key)"),
                        status_code=503, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


def _replayed(stored: idempotency.Stored, stream: bool) -> Response:
    return Response(stored.body, status_code=stored.status_code, media_type=NDJSON if stream else "application/json",
                    headers={idempotency.REPLAYED_HEADER: "true"})


async def _claim(project_id: str, key: str, body: RewardsRequest,
                 spec: dict[str, Any]) -> idempotency.Claim | Response:
    request_hash = idempotency.fingerprint(_fingerprint_body(body) | {"project_id": project_id})
    try:
        got = await asyncio.to_thread(idempotency.claim, project_id, ENDPOINT, key, request_hash,
                                      lease_s=idempotency.lease_seconds(_client_timeout(body, spec)))
    except idempotency.InProgress as exc:
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=exc.status_code,
                            headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(got, idempotency.Stored):
        return _replayed(got, body.stream)
    return got


@asynccontextmanager
async def _lease_kept(held: idempotency.Claim | None) -> AsyncIterator[None]:
    """Renew the claim's lease while the work runs, so only a dead attempt's lease runs out."""
    if held is None:
        yield
        return
    lease_s = (held.lease_expires_at - utcnow()).total_seconds()

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(max(lease_s / 3, 0.05))
            try:
                if not await asyncio.to_thread(idempotency.renew, held, lease_s):
                    return
            except Exception:
                log.warning("could not renew an idempotency lease", exc_info=True)

    task = asyncio.create_task(heartbeat())
    try:
        yield
    finally:
        task.cancel()


def _count_screened(spec: Mapping[str, Any], invalid: Mapping[Any, Any]) -> None:
    """Screened items never reach the verifier: count them in the grader metrics here, once per request
    that runs (not for an idempotent replay)."""
    kind = spec.get("type")
    for _ in invalid:
        metrics.observe_grade(kind if isinstance(kind, str) else "unknown", "invalid_input", 0.0)


async def score(principal: Principal, body: RewardsRequest, auth: str, idempotency_key: str | None) -> Response:
    received_at = time.monotonic()
    project_id = choose_project(principal, body.project_id)
    spec, spec_ref = await asyncio.to_thread(_resolve_spec, principal, project_id, body)
    _check_spec(body, spec)
    # Items that cannot be graded (NUL, lone surrogates, oversized, too deep, NaN) get their own
    # invalid_input result and never travel to the verifier; the rest are graded as usual.
    gradable, invalid = await asyncio.to_thread(screen, body.items)
    key, deprecated_field = idempotency.key_from(idempotency_key, body.idempotency_key)
    held: idempotency.Claim | None = None
    if key is not None:
        claimed = await _claim(project_id, key, body, spec)
        if isinstance(claimed, Response):
            return claimed
        held = claimed
    _count_screened(spec, invalid)
    extra = {"Deprecation": "true", "Warning": DEPRECATED_FIELD_WARNING} if deprecated_field else {}
    request_id = uuid.uuid4().hex
    if body.stream:
        job = _StreamJob(project_id, request_id, spec, spec_ref, body, auth, held, received_at, gradable, invalid)
        job.start()
        return StreamingResponse(job.relay(), media_type=NDJSON, headers=extra)
    try:
        started = time.perf_counter()
        graded: dict[str, Any] = {"results": []}
        if gradable:
            async with _lease_kept(held):
                graded = await _post_grade(_grade_payload(spec, body, gradable, stream=False,
                                                          received_at=received_at),
                                           auth, _client_timeout(body, spec))
    except httpx.TransportError as exc:
        await _release(held)
        raise UpstreamUnavailable(f"the verifier service is unreachable: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        await _release(held)
        raise
    results = merge(body.items, invalid, [ItemResult.model_validate(r) for r in graded["results"]])
    raw = merge(body.items, {k: v.model_dump(mode="json") for k, v in invalid.items()}, graded["results"])
    summary = summarise(results).model_dump(mode="json") if invalid else graded["summary"]
    content = {"request_id": request_id, "project_id": project_id, "spec_ref": spec_ref,
               "results": raw, "summary": summary,
               "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}
    text = json.dumps(content)
    try:
        stored = await asyncio.to_thread(_store, project_id, request_id, spec_ref,
                                         results if body.persist else None, held, text)
    except Exception as exc:
        await _release(held, quietly=True)
        return _storage_unavailable(exc)
    if stored is not None:
        return _replayed(stored, stream=False)
    return Response(text, media_type="application/json", headers=extra)


async def _release(held: idempotency.Claim | None, *, quietly: bool = False) -> None:
    """Give the key back after a failure without an answer; if even that fails, the lease runs out."""
    if held is None:
        return
    try:
        await asyncio.to_thread(idempotency.release, held)
    except Exception:
        if not quietly:
            raise
        log.warning("could not release an idempotency claim; it frees itself when its lease expires",
                    exc_info=True)


_JOBS: set[asyncio.Task[None]] = set()


class _StreamJob:
    """Grade a streamed batch in a task of its own, so a client that goes away does not stop it.

    Result lines are relayed as the verifier finishes them; the closing summary line is sent only
    after the whole answer is stored. A client cut off mid-stream retries with the same key and gets
    the stored answer (or, if this process died first, a fresh run once the lease expires).
    """

    def __init__(self, project_id: str, request_id: str, spec: dict[str, Any], spec_ref: str, body: RewardsRequest,
                 auth: str, held: idempotency.Claim | None, received_at: float, gradable: list[RewardItem],
                 invalid: dict[str, ItemResult]) -> None:
        self.project_id, self.request_id, self.spec, self.spec_ref = project_id, request_id, spec, spec_ref
        self.body, self.auth, self.held, self.received_at = body, auth, held, received_at
        self.gradable, self.invalid = gradable, invalid
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.lines: list[str] = []

    def start(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run())
        _JOBS.add(task)
        task.add_done_callback(_JOBS.discard)
        return task

    async def relay(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk

    def _emit(self, line: str, *, keep: bool = True) -> None:
        if keep:
            self.lines.append(line)
        self.queue.put_nowait((line + "\n").encode())

    def _error(self, code: str, message: str, field: str | None = None) -> None:
        self._emit(json.dumps({"type": "error", "error": {"code": code, "message": message, "field": field}}),
                   keep=False)

    async def _run(self) -> None:
        try:
            async with _lease_kept(self.held):
                await self._grade()
        except Exception as exc:
            log.exception("streamed /v1/rewards request failed")
            await _release(self.held, quietly=True)
            self._error("internal_error", f"grading failed: {type(exc).__name__}")
        finally:
            self.queue.put_nowait(None)

    async def _relay_verifier(self, results: list[ItemResult]) -> bool:
        """Relay the verifier's result lines for the gradable items; False when it failed (and was reported)."""
        try:
            payload = _grade_payload(self.spec, self.body, self.gradable, True, self.received_at)
        except InvalidInput as exc:
            await _release(self.held, quietly=True)
            self._error(exc.code, exc.message, exc.field)
            return False
        try:
            async with service_client("verifier", timeout_s=_client_timeout(self.body, self.spec),
                                      headers={"Authorization": self.auth}) as client, \
                    client.stream("POST", "/v1/grade", content=payload, headers=JSON_HEADERS) as response:
                if response.status_code >= 400:
                    await response.aread()
                    error = _upstream_client_error(response)
                    await _release(self.held, quietly=True)
                    self._error(error.code, error.message, error.field)
                    return False
                async for raw in response.aiter_lines():
                    if not raw.strip():
                        continue
                    result = ItemResult.model_validate_json(raw)
                    results.append(result)
                    self._emit(json.dumps({"type": "result", **result.model_dump(mode="json")}))
        except httpx.TransportError as exc:
            await _release(self.held, quietly=True)
            self._error("upstream_unavailable",
                        f"the verifier stream broke after {len(results)} results: {type(exc).__name__}: {exc}")
            return False
        return True

    async def _grade(self) -> None:
        body, results = self.body, []
        started = time.perf_counter()
        for result in self.invalid.values():  # known before any grading: sent first
            results.append(result)
            self._emit(json.dumps({"type": "result", **result.model_dump(mode="json")}))
        if self.gradable and not await self._relay_verifier(results):
            return
        summary = json.dumps({"type": "summary", "request_id": self.request_id, "project_id": self.project_id,
                              "spec_ref": self.spec_ref, "summary": summarise(results).model_dump(mode="json"),
                              "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)})
        answer = "\n".join([*self.lines, summary]) + "\n"
        try:
            stored = await asyncio.to_thread(_store, self.project_id, self.request_id, self.spec_ref,
                                             results if body.persist else None, self.held, answer)
        except Exception as exc:
            await _release(self.held, quietly=True)
            log.error("could not store a streamed /v1/rewards answer: %s: %s", type(exc).__name__, exc)
            self._error("storage_unavailable", "the results were graded but could not be stored; nothing was "
                        "saved, retry the request (with the same Idempotency-Key)")
            return
        if stored is not None:  # another attempt stored first: close with its summary, the one on record
            summary = stored.body.rstrip("\n").rsplit("\n", 1)[-1]
        self._emit(summary)

"""Python client for the rewardhub reward API (sync and async).

Retries only what is safe to retry: connection failures and 502/503/504 answers, and only
for requests that are idempotent — every reward request carries an idempotency key, so a
retry after a lost answer returns the first result instead of scoring twice.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

# The annotation SDK (rewardhub/annotation_client.py), exported here with the reward client.
from rewardhub.annotation_client import AnnotationClient as AnnotationClient
from rewardhub.annotation_client import AnnotationError as AnnotationError
from rewardhub.annotation_client import AsyncAnnotationClient as AsyncAnnotationClient

RETRYABLE_STATUS = frozenset({502, 503, 504})
DEFAULT_URL = "http://127.0.0.1:8000"


class RewardHubError(Exception):
    """An error answer from the API, with its code, message and field."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status_code, self.code, self.message, self.field = status_code, code, message, field


@dataclass(frozen=True)
class RewardResult:
    id: str
    score: float | None
    status: str
    sub_scores: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class RewardBatch:
    request_id: str
    spec_ref: str
    results: list[RewardResult]
    summary: dict[str, Any]

    @property
    def scores(self) -> list[float | None]:
        """One score per item; None where the item could not be graded (status not ok)."""
        return [r.score if r.ok else None for r in self.results]


def make_items(completions: Sequence[str], ground_truths: Sequence[Any] | None = None,
               prompts: Sequence[Any] | None = None, ids: Sequence[str] | None = None,
               metadata: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    n = len(completions)
    for name, seq in (("ground_truths", ground_truths), ("prompts", prompts), ("ids", ids), ("metadata", metadata)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but completions has {n}")
    items = []
    for i, completion in enumerate(completions):
        item: dict[str, Any] = {"id": ids[i] if ids else str(i), "completion": completion}
        if ground_truths is not None:
            item["ground_truth"] = ground_truths[i]
        if prompts is not None:
            item["prompt"] = prompts[i]
        if metadata is not None:
            item["metadata"] = dict(metadata[i])
        items.append(item)
    return items


def _body(items: Iterable[Mapping[str, Any]], spec: Mapping[str, Any] | str, project_id: str | None,
          deadline_s: float | None, persist: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"items": list(items), "persist": persist}
    if isinstance(spec, str):
        body["spec_ref"] = spec
    else:
        body["spec"] = dict(spec)
    if project_id:
        body["project_id"] = project_id
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    return body


def _encode(body: dict[str, Any]) -> bytes:
    """The request as JSON. ASCII escapes carry any Python text (a lone surrogate in a model output
    becomes ``\\ud800``), and NaN is sent as written: the server answers such an item with its own
    ``invalid_input`` status rather than the client failing the whole batch before sending it."""
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _parse(response: httpx.Response) -> RewardBatch:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            raise RewardHubError(response.status_code, error["code"], error["message"], error.get("field"))
        except (ValueError, KeyError, TypeError):
            raise RewardHubError(response.status_code, "http_error", response.text[:500]) from None
    data = response.json()
    results = [RewardResult(id=r["id"], score=r["score"], status=r["status"], sub_scores=r.get("sub_scores", {}),
                            details=r.get("details", {}), elapsed_ms=r.get("elapsed_ms", 0.0))
               for r in data["results"]]
    return RewardBatch(request_id=data["request_id"], spec_ref=data["spec_ref"], results=results,
                       summary=data["summary"])


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    # Same idempotency key: a retry while the first attempt still runs waits for its answer.
    return isinstance(exc, RewardHubError) and (
        exc.status_code in RETRYABLE_STATUS or exc.code == "idempotency_in_progress")


@dataclass
class ClientConfig:
    base_url: str = field(default_factory=lambda: os.environ.get("REWARDHUB_URL", DEFAULT_URL))
    api_key: str = field(default_factory=lambda: os.environ.get("REWARDHUB_API_KEY", ""))
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)


class RewardClient:
    """Synchronous client. ``transport`` lets tests and the embedded default call an app in-process."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 3, transport: httpx.BaseTransport | None = None) -> None:
        self.config = ClientConfig(timeout_s=timeout_s, max_retries=max_retries)
        if base_url:
            self.config.base_url = base_url
        if api_key:
            self.config.api_key = api_key
        self._http = httpx.Client(base_url=self.config.base_url, headers=self.config.headers(),
                                  timeout=self.config.timeout(), transport=transport)

    def score(self, items: Iterable[Mapping[str, Any]], spec: Mapping[str, Any] | str, *,
              project_id: str | None = None, deadline_s: float | None = None, persist: bool = False,
              idempotency_key: str | None = None) -> RewardBatch:
        body = _body(items, spec, project_id, deadline_s, persist)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex, "Content-Type": "application/json"}
        for attempt in Retrying(stop=stop_after_attempt(self.config.max_retries + 1),
                                wait=wait_exponential(multiplier=0.3, max=10),
                                retry=retry_if_exception(_retryable), reraise=True):
            with attempt:
                return _parse(self._http.post("/v1/rewards", content=_encode(body), headers=headers))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncRewardClient:
    """Asynchronous client with the same behaviour as :class:`RewardClient`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 3, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = ClientConfig(timeout_s=timeout_s, max_retries=max_retries)
        if base_url:
            self.config.base_url = base_url
        if api_key:
            self.config.api_key = api_key
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=self.config.headers(),
                                       timeout=self.config.timeout(), transport=transport)

    async def score(self, items: Iterable[Mapping[str, Any]], spec: Mapping[str, Any] | str, *,
                    project_id: str | None = None, deadline_s: float | None = None, persist: bool = False,
                    idempotency_key: str | None = None) -> RewardBatch:
        body = _body(items, spec, project_id, deadline_s, persist)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex, "Content-Type": "application/json"}
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.config.max_retries + 1),
                                           wait=wait_exponential(multiplier=0.3, max=10),
                                           retry=retry_if_exception(_retryable), reraise=True):
            with attempt:
                return _parse(await self._http.post("/v1/rewards", content=_encode(body), headers=headers))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

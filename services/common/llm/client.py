"""An async client for any OpenAI-compatible ``/chat/completions`` server (vLLM in production).

Defaults come from settings (``REWARDHUB_LLM_BASE_URL``, ``..._MODEL``, ``..._API_KEY``,
``..._TIMEOUT_S``, ``..._MAX_CONCURRENCY``, ``..._REQUESTS_PER_S``, ``..._MAX_RETRIES``); each can
be overridden by a constructor argument. ``base_url`` follows the OpenAI convention and includes
the version prefix (``http://vllm:8000/v1``).

Behaviour:
- bounded concurrency (a semaphore of ``max_concurrency``) and a token-bucket rate limit;
- each attempt has a hard timeout of ``timeout_s`` (connect + send + the whole response);
- transient failures (connect errors, timeouts, dropped connections, HTTP 429 and 5xx) are retried
  with exponential backoff, honouring ``Retry-After``; any other 4xx fails at once;
- decoding is deterministic by default: ``temperature=0`` and a fixed ``seed``;
- every failure surfaces as :class:`LLMBackendError` carrying the cause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from services.common.llm.rate_limit import TokenBucket
from services.common.llm.types import ChatMessage, ChatResult, LLMBackendError
from services.common.settings import get_settings

LLM_REQUESTS = Counter("rewardhub_llm_requests_total", "LLM chat calls by final outcome",
                       ["backend", "outcome"])
LLM_ATTEMPT_FAILURES = Counter("rewardhub_llm_attempt_failures_total",
                               "Failed LLM attempts (retried or not), by kind", ["backend", "kind"])
LLM_LATENCY = Histogram("rewardhub_llm_request_seconds", "LLM chat call latency including retries",
                        ["backend"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

BACKEND_LABEL = "openai"


def is_retryable(exc: BaseException) -> bool:
    """Retry only transient failures: connect errors, timeouts, 429 and 5xx."""
    return isinstance(exc, LLMBackendError) and exc.retryable


def backoff_delay_s(attempt: int, initial_s: float, max_s: float, retry_after_s: float | None = None) -> float:
    """Wait before retry number ``attempt`` (1-based): ``min(max_s, max(initial·2^(attempt-1), retry_after))``."""
    delay = initial_s * (2.0 ** max(0, attempt - 1))
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(max_s, delay)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class _LoopState:
    """Objects bound to one event loop (asyncio primitives and the pooled HTTP client)."""

    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    bucket: TokenBucket


class OpenAIChatClient:
    """Async OpenAI-compatible chat client; see the module docstring for the retry/limit policy.

    ``transport`` lets tests route requests in-process (``httpx.ASGITransport``).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout_s: float | None = None, max_concurrency: int | None = None,
                 requests_per_s: float | None = None, max_retries: int | None = None,
                 seed: int | None = 0, temperature: float = 0.0, max_tokens: int | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 8.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        settings = get_settings()
        self.base_url = (base_url if base_url is not None else settings.llm_base_url).rstrip("/")
        self.model = model if model is not None else settings.llm_model
        self.api_key = api_key if api_key is not None else settings.llm_api_key
        self.timeout_s = float(timeout_s if timeout_s is not None else settings.llm_timeout_s)
        self.max_concurrency = int(max_concurrency if max_concurrency is not None else settings.llm_max_concurrency)
        self.requests_per_s = float(requests_per_s if requests_per_s is not None else settings.llm_requests_per_s)
        self.max_retries = int(max_retries if max_retries is not None else settings.llm_max_retries)
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        self.seed = seed
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._transport = transport
        self._headers = dict(headers or {})
        self._state: _LoopState | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop or self._state.loop.is_closed():
            # asyncio primitives and pooled connections belong to one loop; a new loop gets new ones.
            headers = {"Content-Type": "application/json", **self._headers}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            http = httpx.AsyncClient(transport=self._transport, headers=headers,
                                     timeout=httpx.Timeout(self.timeout_s),
                                     limits=httpx.Limits(max_connections=self.max_concurrency))
            self._state = _LoopState(loop=loop, http=http, semaphore=asyncio.Semaphore(self.max_concurrency),
                                     bucket=TokenBucket(self.requests_per_s))
        return self._state

    async def aclose(self) -> None:
        if self._state is not None and self._state.loop is asyncio.get_running_loop():
            await self._state.http.aclose()
        self._state = None

    async def __aenter__(self) -> OpenAIChatClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # -- the call ------------------------------------------------------------------------------
    def build_payload(self, messages: Sequence[ChatMessage], **opts: Any) -> dict[str, Any]:
        """The request body: deterministic defaults, then the caller's options on top."""
        payload: dict[str, Any] = {"model": opts.pop("model", None) or self.model,
                                   "messages": [dict(m) for m in messages],
                                   "temperature": self.temperature}
        if self.seed is not None:
            payload["seed"] = self.seed
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        payload.update({k: v for k, v in opts.items() if v is not None})
        payload["stream"] = False
        return payload

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        """One chat completion; raises :class:`LLMBackendError` once retries are exhausted."""
        if not self.base_url:
            LLM_REQUESTS.labels(BACKEND_LABEL, "config").inc()
            raise LLMBackendError("no LLM backend configured: llm_base_url is empty (set REWARDHUB_LLM_BASE_URL)",
                                  kind="config")
        if not messages:
            raise ValueError("messages: at least one message is required")
        payload = self.build_payload(messages, **opts)
        state = self._loop_state()
        started = time.monotonic()
        attempts = 0

        def _wait(retry_state: RetryCallState) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            retry_after = exc.retry_after_s if isinstance(exc, LLMBackendError) else None
            return backoff_delay_s(retry_state.attempt_number, self.backoff_initial_s, self.backoff_max_s,
                                   retry_after)

        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=_wait,
                                 retry=retry_if_exception(is_retryable), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    result = await self._attempt(state, payload)
        except LLMBackendError as exc:
            exc.attempts = attempts
            LLM_REQUESTS.labels(BACKEND_LABEL, exc.kind).inc()
            LLM_LATENCY.labels(BACKEND_LABEL).observe(time.monotonic() - started)
            raise
        latency = time.monotonic() - started
        LLM_REQUESTS.labels(BACKEND_LABEL, "ok").inc()
        LLM_LATENCY.labels(BACKEND_LABEL).observe(latency)
        return ChatResult(text=result.text, usage=result.usage, latency_s=latency,
                          finish_reason=result.finish_reason, model=result.model, attempts=attempts)

    async def _attempt(self, state: _LoopState, payload: dict[str, Any]) -> ChatResult:
        url = f"{self.base_url}/chat/completions"
        async with state.semaphore:
            await state.bucket.acquire()
            try:
                # httpx's timeout is per read; the outer deadline bounds a server that trickles bytes.
                async with asyncio.timeout(self.timeout_s):
                    response = await state.http.post(url, json=payload)
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise self._failure(f"LLM request to {url} timed out after {self.timeout_s:g}s",
                                    kind="timeout", cause=exc, retryable=True) from exc
            except httpx.ConnectError as exc:
                raise self._failure(f"cannot connect to LLM backend at {self.base_url}: {exc}",
                                    kind="connect", cause=exc, retryable=True) from exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                raise self._failure(f"LLM backend at {self.base_url} dropped the connection: {exc}",
                                    kind="connect", cause=exc, retryable=True) from exc
            except httpx.HTTPError as exc:
                raise self._failure(f"LLM request to {url} failed: {type(exc).__name__}: {exc}",
                                    kind="connect", cause=exc, retryable=False) from exc
        return self._read_response(response)

    def _failure(self, message: str, *, kind: Any, cause: BaseException | None = None,
                 status_code: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> LLMBackendError:
        LLM_ATTEMPT_FAILURES.labels(BACKEND_LABEL, kind).inc()
        return LLMBackendError(message, kind=kind, cause=cause, status_code=status_code, retryable=retryable,
                               retry_after_s=retry_after_s)

    def _read_response(self, response: httpx.Response) -> ChatResult:
        status = response.status_code
        if status >= 400:
            transient = status == 429 or status >= 500
            detail = response.text[:500]
            raise self._failure(f"LLM backend answered HTTP {status}: {detail}", kind="http_status",
                                status_code=status, retryable=transient,
                                retry_after_s=parse_retry_after(response.headers.get("retry-after")))
        try:
            body = response.json()
            choice = body["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise self._failure(f"LLM backend returned a body that is not a chat completion: "
                                f"{response.text[:300]!r}", kind="bad_response", cause=exc) from exc
        usage = {k: int(v) for k, v in (body.get("usage") or {}).items() if isinstance(v, int | float)}
        return ChatResult(text=text if isinstance(text, str) else "", usage=usage,
                          finish_reason=choice.get("finish_reason"), model=str(body.get("model") or ""))

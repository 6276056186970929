"""``ScriptedLLMServer``: a TEST DOUBLE of an OpenAI-compatible chat server.

It is not a model. It answers ``POST /v1/chat/completions`` from a script — a queue of canned
replies or a function of the request — so tests can drive parsing and control flow (retries on
500/429, timeouts from injected delays, adversarial judge outputs) against the real HTTP client.
Served either by uvicorn on a loopback port in a background thread (:meth:`start`) or in-process
through ``httpx.ASGITransport`` (:meth:`transport`). Every request body is kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class ScriptedReply:
    """One canned answer: assistant ``text`` with HTTP 200, or an injected failure.

    ``status`` != 200 sends an error body (``body`` overrides it); ``delay_s`` waits before
    answering (to trigger client timeouts); ``headers`` are added (e.g. ``Retry-After``);
    ``raw_body`` replaces the whole 200 body (to send malformed completions).
    """

    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    raw_body: Any = None

    @classmethod
    def error(cls, status: int = 500, message: str = "injected failure", **kw: Any) -> ScriptedReply:
        return cls(status=status, body={"error": {"message": message, "type": "scripted"}}, **kw)

    @classmethod
    def rate_limited(cls, retry_after_s: float | None = None) -> ScriptedReply:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else {}
        return cls.error(429, "rate limited (scripted)", headers=headers)


ScriptFn = Callable[[dict[str, Any]], "ScriptedReply | str | Awaitable[ScriptedReply | str]"]


def last_user_text(request: dict[str, Any]) -> str:
    """The content of the last user message of a recorded chat request."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


class ScriptedLLMServer:
    """Test double of an OpenAI-compatible server; see the module docstring.

    ``script`` is a function ``request_body -> ScriptedReply | str`` (sync or async) or an iterable
    of replies consumed in order. When a queue runs out the double answers HTTP 418 with
    "script exhausted" (a non-retryable status, so a test fails loudly instead of looping).
    """

    def __init__(self, script: ScriptFn | Iterable[ScriptedReply | str] = (), *,
                 model: str = "scripted-test-double") -> None:
        self.model = model
        self._fn: ScriptFn | None = script if callable(script) else None
        self._queue: deque[ScriptedReply | str] = deque() if callable(script) else deque(script)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self.app = self._build_app()

    # -- scripting -----------------------------------------------------------------------------
    def enqueue(self, *replies: ScriptedReply | str) -> None:
        with self._lock:
            self._queue.extend(replies)

    async def _next_reply(self, body: dict[str, Any]) -> ScriptedReply:
        if self._fn is not None:
            reply = self._fn(body)
            if inspect.isawaitable(reply):
                reply = await reply
        else:
            with self._lock:
                if not self._queue:
                    return ScriptedReply.error(418, "ScriptedLLMServer: script exhausted")
                reply = self._queue.popleft()
        return ScriptedReply(text=reply) if isinstance(reply, str) else reply

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="ScriptedLLMServer (test double)")

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> JSONResponse:
            body = await request.json()
            with self._lock:
                self.requests.append(body)
                self.headers.append(dict(request.headers))
                index = len(self.requests)
            reply = await self._next_reply(body)
            if reply.delay_s > 0:
                await self._delay(reply.delay_s)
            if reply.status != 200:
                return JSONResponse(reply.body if reply.body is not None else {"error": "scripted"},
                                    status_code=reply.status, headers=reply.headers)
            if reply.raw_body is not None:
                return JSONResponse(reply.raw_body, headers=reply.headers)
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            completion_tokens = len(reply.text.split())
            return JSONResponse({
                "id": f"scripted-{index}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }, headers=reply.headers)

        return app

    async def _delay(self, seconds: float) -> None:
        # Sleep in short slices so stop() is never held up by a long injected delay.
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    # -- serving -------------------------------------------------------------------------------
    def transport(self) -> httpx.ASGITransport:
        """In-process transport: use with base URL ``http://scripted.local/v1``."""
        return httpx.ASGITransport(app=self.app)

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("ScriptedLLMServer is not started; call start() or use transport()")
        return self._base_url

    def start(self) -> str:
        """Serve on a fresh loopback port in a daemon thread; returns the ``.../v1`` base URL."""
        if self._server is not None:
            return self.base_url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="scripted-llm-server")
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ScriptedLLMServer did not start")
            time.sleep(0.01)
        self._base_url = f"http://127.0.0.1:{port}/v1"
        return self._base_url

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

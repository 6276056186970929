"""The shared vocabulary of every LLM backend: messages in, a :class:`ChatResult` out, one error type.

Every backend (the OpenAI-compatible HTTP client, the local transformers model, and any test
double) implements :class:`ChatBackend`, so the rubric reward model never knows which one it talks to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

ChatMessage = Mapping[str, Any]
"""One OpenAI-style chat message: ``{"role": "system"|"user"|"assistant", "content": str}``."""

ErrorKind = Literal["config", "connect", "timeout", "http_status", "bad_response", "local_model"]


@dataclass(frozen=True)
class ChatResult:
    """One completed chat call.

    ``usage`` holds ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` where the backend
    reports them; ``attempts`` counts HTTP attempts including retries (1 = no retry).
    """

    text: str
    usage: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    finish_reason: str | None = None
    model: str = ""
    attempts: int = 1


class LLMBackendError(Exception):
    """An LLM call that did not produce a completion, with the reason a caller can act on.

    ``kind`` says what failed (``timeout`` maps to a grader status ``timeout``, everything else to
    ``error``); ``cause`` is the underlying exception, ``status_code`` the HTTP status where there was
    one; ``retryable`` marks transient failures (connect errors, timeouts, 429, 5xx).
    """

    def __init__(self, message: str, *, kind: ErrorKind, cause: BaseException | None = None,
                 status_code: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.kind: ErrorKind = kind
        self.cause = cause
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = attempts
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        suffix = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.message}{suffix}"


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers a chat: ``await backend.chat(messages, **opts) -> ChatResult``.

    Options every backend understands: ``temperature``, ``max_tokens``, ``seed``, ``stop``;
    the HTTP client passes any other option through to the server (e.g. ``response_format``).
    Failures raise :class:`LLMBackendError`, never a bare transport exception.
    """

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult: ...

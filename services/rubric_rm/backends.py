"""The LLM backend rubric_rm judges and generates with, chosen from settings and kept per configuration.

A missing or broken configuration is not a crash: it becomes a backend whose every call fails
with the configuration error, so each result carries status ``error`` and the cause.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.llm.client import OpenAIChatClient
from services.common.llm.factory import backend_from_settings
from services.common.llm.local import LocalTransformersBackend
from services.common.llm.types import ChatBackend, ChatMessage, ChatResult, LLMBackendError
from services.common.settings import get_settings
from services.rubric_rm import prompts
from services.rubric_rm.pipeline import stable_key

_BACKENDS: dict[tuple[Any, ...], ChatBackend] = {}
_LOCK = threading.Lock()

# Prompt changes must not reuse rubrics made with the old prompts: their digest is in the version.
PROMPTS_DIGEST = stable_key(prompts.GENERATOR_SYSTEM, prompts.GENERATOR_TEMPLATE, prompts.DIAGNOSE_SYSTEM,
                            prompts.DIAGNOSE_TEMPLATE, prompts.SYNTHESISE_SYSTEM, prompts.SYNTHESISE_TEMPLATE)[:12]


class FailingBackend:
    """A backend that cannot be built: every call raises the reason (an ``LLMBackendError``)."""

    def __init__(self, error: LLMBackendError) -> None:
        self.error = error

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        raise LLMBackendError(self.error.message, kind=self.error.kind, cause=self.error.cause)


class TokenCap:
    """Clamp every call's ``max_tokens`` to ``cap``: a local CPU model's output budget is its own
    ``max_new_tokens``, whatever a prompt asks for (the judge asks for up to 1024)."""

    def __init__(self, inner: ChatBackend, cap: int) -> None:
        self.inner = inner
        self.cap = cap

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        opts["max_tokens"] = min(int(opts.get("max_tokens") or self.cap), self.cap)
        return await self.inner.chat(messages, **opts)


def _build() -> ChatBackend:
    try:
        backend = backend_from_settings()
    except LLMBackendError as exc:
        return FailingBackend(exc)
    except ValueError as exc:  # e.g. a local model path that is not a directory
        return FailingBackend(LLMBackendError(f"LLM backend misconfigured: {exc}", kind="config"))
    if isinstance(backend, LocalTransformersBackend):
        return TokenCap(backend, backend.max_new_tokens)
    return backend


def _config_key() -> tuple[Any, ...]:
    s = get_settings()
    return (s.llm_base_url, s.llm_model, s.llm_api_key, s.llm_timeout_s, s.llm_max_concurrency,
            s.llm_requests_per_s, s.llm_max_retries, s.llm_local_model_path)


def judge_backend() -> ChatBackend:
    """The configured backend (one instance per configuration, so a local model loads once)."""
    key = _config_key()
    with _LOCK:
        backend = _BACKENDS.get(key)
        if backend is None:
            backend = _BACKENDS[key] = _build()
        return backend


def pin_backend(backend: ChatBackend) -> None:
    """Use ``backend`` for the current configuration (tests; tools that build their own backend)."""
    with _LOCK:
        _BACKENDS[_config_key()] = backend


def forget_backends() -> None:
    """Drop cached backends (tests switch configurations)."""
    with _LOCK:
        _BACKENDS.clear()


def model_label() -> str:
    """The judge/generator model's name as it enters a generator version."""
    s = get_settings()
    if s.llm_base_url:
        return s.llm_model or s.llm_base_url
    if s.llm_local_model_path:
        return f"local:{Path(s.llm_local_model_path).name}"
    return "unconfigured"


def generator_version(method: str) -> str:
    """``method:model:prompts-digest``: a rubric cached under one version is reused only by the same maker."""
    return f"{method}:{model_label()}:{PROMPTS_DIGEST}"


def fresh_backend() -> ChatBackend:
    """The backend for a job running on its own event loop: a new HTTP client (pooled connections
    belong to one loop); any other backend (a local model, thread-safe) is shared."""
    backend = judge_backend()
    return OpenAIChatClient() if isinstance(backend, OpenAIChatClient) else backend

"""Who writes hints and examiner tasks: the configured LLM backend, or a registered teacher model itself.

The configured backend (``REWARDHUB_LLM_BASE_URL``: an OpenAI-compatible server such as vLLM serving
the policy; or ``REWARDHUB_LLM_LOCAL_MODEL_PATH``) is built once per configuration. A missing
configuration is not a crash: every call fails with the reason, so each item is status ``error``.
``TeacherChat`` generates with a loaded teacher model (greedy by default), under its lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

from services.common.llm.factory import backend_from_settings
from services.common.llm.types import ChatBackend, ChatMessage, ChatResult, LLMBackendError
from services.common.settings import get_settings
from services.teacher.model_cache import LoadedTeacher

_BACKENDS: dict[tuple[Any, ...], ChatBackend] = {}
_LOCK = threading.Lock()


class FailingBackend:
    """A backend that cannot be built: every call raises the reason."""

    def __init__(self, error: LLMBackendError) -> None:
        self.error = error

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        raise LLMBackendError(self.error.message, kind=self.error.kind, cause=self.error.cause)


def _key() -> tuple[Any, ...]:
    s = get_settings()
    return (s.llm_base_url, s.llm_model, s.llm_api_key, s.llm_timeout_s, s.llm_max_concurrency,
            s.llm_requests_per_s, s.llm_max_retries, s.llm_local_model_path)


def llm_backend() -> ChatBackend:
    """The configured chat backend (one per configuration)."""
    key = _key()
    with _LOCK:
        backend = _BACKENDS.get(key)
        if backend is None:
            try:
                backend = backend_from_settings()
            except LLMBackendError as exc:
                backend = FailingBackend(exc)
            except ValueError as exc:
                backend = FailingBackend(LLMBackendError(f"LLM backend misconfigured: {exc}", kind="config"))
            _BACKENDS[key] = backend
        return backend


def forget_backends() -> None:
    """Drop cached backends (tests switch configurations)."""
    with _LOCK:
        _BACKENDS.clear()


class TeacherChat:
    """A :class:`ChatBackend` over a loaded teacher model: its chat template, ``generate``, greedy at
    temperature 0 (sampling with ``seed`` above it)."""

    def __init__(self, teacher: LoadedTeacher) -> None:
        self.teacher = teacher

    def generate(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        import torch

        started = time.monotonic()
        tok, model = self.teacher.tokenizer, self.teacher.model
        if not getattr(tok, "chat_template", None):
            raise LLMBackendError(f"teacher model {self.teacher.record.name!r} has no chat template", kind="local_model")
        max_new = int(opts.get("max_tokens") or 128)
        temperature = float(opts.get("temperature") or 0.0)
        try:
            prompt = tok.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.teacher.device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id,
                                      "do_sample": temperature > 0}
            if temperature > 0:
                torch.manual_seed(int(opts.get("seed") or 0))
                kwargs["temperature"] = temperature
            with self.teacher.lock, torch.no_grad():
                out = model.generate(**enc, **kwargs)
        except LLMBackendError:
            raise
        except Exception as exc:  # a model or tokenizer failure is this item's error, with its cause
            raise LLMBackendError(f"teacher model failed: {type(exc).__name__}: {exc}", kind="local_model",
                                  cause=exc) from exc
        new = out[0, enc["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        return ChatResult(text=text, latency_s=time.monotonic() - started, model=self.teacher.record.name,
                          usage={"prompt_tokens": int(enc["input_ids"].shape[1]), "completion_tokens": len(new)})

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        return await asyncio.to_thread(self.generate, messages, **opts)

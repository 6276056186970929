"""LLM backends for every service: an OpenAI-compatible HTTP client, a local transformers model,
structured-output parsing with repair, and ``ScriptedLLMServer`` (a test double)."""

from __future__ import annotations

from services.common.llm.client import OpenAIChatClient, backoff_delay_s, is_retryable, parse_retry_after
from services.common.llm.factory import backend_from_settings
from services.common.llm.local import LocalTransformersBackend
from services.common.llm.rate_limit import TokenBucket
from services.common.llm.structured import (
    ParseOutcome,
    extract_json_candidates,
    loads_lenient,
    parse_stats,
    parse_structured,
    reset_parse_stats,
)
from services.common.llm.types import ChatBackend, ChatMessage, ChatResult, LLMBackendError

__all__ = [
    "ChatBackend",
    "ChatMessage",
    "ChatResult",
    "LLMBackendError",
    "LocalTransformersBackend",
    "OpenAIChatClient",
    "ParseOutcome",
    "TokenBucket",
    "backend_from_settings",
    "backoff_delay_s",
    "extract_json_candidates",
    "is_retryable",
    "loads_lenient",
    "parse_retry_after",
    "parse_stats",
    "parse_structured",
    "reset_parse_stats",
]

"""Pick the configured LLM backend: the OpenAI-compatible server if a URL is set, else a local model."""

from __future__ import annotations

from services.common.llm.client import OpenAIChatClient
from services.common.llm.local import LocalTransformersBackend
from services.common.llm.types import ChatBackend, LLMBackendError
from services.common.settings import get_settings


def backend_from_settings() -> ChatBackend:
    """``OpenAIChatClient`` when ``llm_base_url`` is set, else ``LocalTransformersBackend`` on
    ``llm_local_model_path``; raises ``LLMBackendError(kind="config")`` when neither is set."""
    settings = get_settings()
    if settings.llm_base_url:
        return OpenAIChatClient()
    if settings.llm_local_model_path:
        return LocalTransformersBackend(settings.llm_local_model_path)
    raise LLMBackendError("no LLM backend configured: set REWARDHUB_LLM_BASE_URL (an OpenAI-compatible server) "
                          "or REWARDHUB_LLM_LOCAL_MODEL_PATH (a local model directory)", kind="config")

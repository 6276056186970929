"""OpenAIChatClient against ScriptedLLMServer (a test double): retries, no-retry, timeouts, limits."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from services.common.llm import LLMBackendError, OpenAIChatClient, backoff_delay_s, parse_retry_after
from services.common.llm.scripted import ScriptedLLMServer, ScriptedReply

MESSAGES = [{"role": "user", "content": "Say hi"}]


def _client(server: ScriptedLLMServer, **kw: Any) -> OpenAIChatClient:
    kw.setdefault("backoff_initial_s", 0.001)
    kw.setdefault("backoff_max_s", 0.01)
    return OpenAIChatClient("http://scripted.local/v1", "judge", "sk-test", transport=server.transport(), **kw)


def test_success_returns_text_usage_and_deterministic_payload() -> None:
    server = ScriptedLLMServer(["hello there"])
    result = asyncio.run(_client(server, max_retries=0).chat(MESSAGES))
    assert result.text == "hello there"
    assert result.finish_reason == "stop"
    assert result.usage["completion_tokens"] == 2
    assert result.attempts == 1
    assert result.latency_s >= 0
    sent = server.requests[0]
    assert sent["temperature"] == 0.0 and sent["seed"] == 0 and sent["model"] == "judge"
    assert sent["messages"] == MESSAGES
    assert server.headers[0]["authorization"] == "Bearer sk-test"


def test_caller_options_override_defaults() -> None:
    server = ScriptedLLMServer(["x"])
    asyncio.run(_client(server).chat(MESSAGES, temperature=0.7, max_tokens=12, seed=5))
    sent = server.requests[0]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.7, 12, 5)


def test_500_then_429_then_success_is_retried() -> None:
    server = ScriptedLLMServer([ScriptedReply.error(500), ScriptedReply.rate_limited(0.001), "finally"])
    result = asyncio.run(_client(server, max_retries=3).chat(MESSAGES))
    assert result.text == "finally"
    assert result.attempts == 3
    assert len(server.requests) == 3


def test_retries_exhausted_raise_with_cause() -> None:
    server = ScriptedLLMServer([ScriptedReply.error(503)] * 3)
    with pytest.raises(LLMBackendError) as info:
        asyncio.run(_client(server, max_retries=2).chat(MESSAGES))
    assert info.value.status_code == 503 and info.value.kind == "http_status"
    assert info.value.attempts == 3 and len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_other_than_429_are_not_retried(status: int) -> None:
    server = ScriptedLLMServer([ScriptedReply.error(status, "bad request"), "never reached"])
    with pytest.raises(LLMBackendError) as info:
        asyncio.run(_client(server, max_retries=3).chat(MESSAGES))
    assert info.value.status_code == status
    assert info.value.retryable is False
    assert len(server.requests) == 1


def test_malformed_completion_body_is_an_error_not_retried() -> None:
    server = ScriptedLLMServer([ScriptedReply(raw_body={"unexpected": True}), "x"])
    with pytest.raises(LLMBackendError) as info:
        asyncio.run(_client(server, max_retries=3).chat(MESSAGES))
    assert info.value.kind == "bad_response"
    assert len(server.requests) == 1


def test_slow_server_times_out_per_attempt() -> None:
    server = ScriptedLLMServer([ScriptedReply(text="late", delay_s=30)])
    with pytest.raises(LLMBackendError) as info:
        asyncio.run(_client(server, max_retries=0, timeout_s=0.2).chat(MESSAGES))
    assert info.value.kind == "timeout"


def test_timeout_then_success_is_retried() -> None:
    server = ScriptedLLMServer([ScriptedReply(text="late", delay_s=30), "fast"])
    result = asyncio.run(_client(server, max_retries=1, timeout_s=0.2).chat(MESSAGES))
    assert result.text == "fast" and result.attempts == 2


def test_unreachable_backend_fails_fast_with_connect_error() -> None:
    with socket.socket() as sock:  # a loopback port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, timeout_s=2,
                              backoff_initial_s=0.001, backoff_max_s=0.01)
    with pytest.raises(LLMBackendError) as info:
        asyncio.run(client.chat(MESSAGES))
    assert info.value.kind == "connect"
    assert info.value.attempts == 3
    assert info.value.cause is not None


def test_unconfigured_backend_says_which_setting() -> None:
    with pytest.raises(LLMBackendError, match="llm_base_url"):
        asyncio.run(OpenAIChatClient(base_url="").chat(MESSAGES))


def test_settings_supply_defaults(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_LLM_BASE_URL", "http://vllm:8000/v1/")
    monkeypatch.setenv("REWARDHUB_LLM_MODEL", "qwen-judge")
    monkeypatch.setenv("REWARDHUB_LLM_MAX_RETRIES", "5")
    monkeypatch.setenv("REWARDHUB_LLM_MAX_CONCURRENCY", "3")
    reset_settings_cache()
    client = OpenAIChatClient()
    assert (client.base_url, client.model, client.max_retries, client.max_concurrency) == (
        "http://vllm:8000/v1", "qwen-judge", 5, 3)
    assert OpenAIChatClient(model="other", max_retries=0).model == "other"


def test_concurrency_is_bounded_by_the_semaphore() -> None:
    in_flight = {"now": 0, "max": 0}

    async def script(_body: dict[str, Any]) -> str:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0.005)  # yield so other requests could overlap if allowed
        in_flight["now"] -= 1
        return "ok"

    server = ScriptedLLMServer(script)
    client = _client(server, max_concurrency=2)

    async def many() -> list[str]:
        results = await asyncio.gather(*(client.chat(MESSAGES) for _ in range(8)))
        return [r.text for r in results]

    assert asyncio.run(many()) == ["ok"] * 8
    assert in_flight["max"] == 2


def test_real_loopback_server_round_trip() -> None:
    with ScriptedLLMServer([ScriptedReply.error(502), "over http"]) as server:
        client = OpenAIChatClient(server.base_url, "m", max_retries=1, backoff_initial_s=0.001)
        result = asyncio.run(client.chat(MESSAGES))
    assert result.text == "over http" and result.attempts == 2


def test_exhausted_script_fails_loudly() -> None:
    server = ScriptedLLMServer([])
    with pytest.raises(LLMBackendError, match="script exhausted"):
        asyncio.run(_client(server, max_retries=3).chat(MESSAGES))
    assert len(server.requests) == 1


def test_backoff_delay_formula() -> None:
    # initial · 2^(attempt-1), raised to Retry-After, capped at max.
    assert backoff_delay_s(1, 0.5, 8) == 0.5
    assert backoff_delay_s(3, 0.5, 8) == 2.0
    assert backoff_delay_s(10, 0.5, 8) == 8.0
    assert backoff_delay_s(1, 0.5, 8, retry_after_s=3) == 3.0
    assert backoff_delay_s(1, 0.5, 8, retry_after_s=60) == 8.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_backend_from_settings(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.llm import LocalTransformersBackend, backend_from_settings
    from services.common.settings import reset_settings_cache

    with pytest.raises(LLMBackendError, match="REWARDHUB_LLM_BASE_URL"):
        backend_from_settings()
    model_dir = isolated_env / "model"
    model_dir.mkdir()
    monkeypatch.setenv("REWARDHUB_LLM_LOCAL_MODEL_PATH", str(model_dir))
    reset_settings_cache()
    assert isinstance(backend_from_settings(), LocalTransformersBackend)
    monkeypatch.setenv("REWARDHUB_LLM_BASE_URL", "http://vllm:8000/v1")
    reset_settings_cache()
    assert isinstance(backend_from_settings(), OpenAIChatClient)

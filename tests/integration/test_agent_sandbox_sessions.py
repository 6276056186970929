"""The agent's code environment against the real sandbox service's tool sessions (``rewardhub serve
sandbox`` on a loopback port): delayed blocks run at ``<tool_call>`` in one persistent, isolated
session per trajectory, and closing the episode deletes the session. Skips with the reason where the
sandbox cannot run (no user namespaces) or where its ``/v1/sessions`` routes are not there."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import require
from tests.integration.test_sandbox_fusion_clients import sandbox_url  # noqa: F401  (the module fixture)
from trainer.agent import CodeToolEnvironment, SandboxSessionTool
from trainer.data import PromptRow

ROW = PromptRow(0, "Compute 12 * 34 + 5.\n", "413")


def _sessions_routes(url: str) -> bool:
    answer = httpx.post(url + "/v1/sessions", json={"language": "python", "ttl_s": 30}, timeout=60)
    if answer.status_code == 201:
        httpx.delete(url + f"/v1/sessions/{answer.json()['session_id']}", timeout=30)
        return True
    return answer.status_code not in (404, 405)


def test_delayed_blocks_run_in_one_sandbox_session(sandbox_url: str) -> None:  # noqa: F811
    require(_sessions_routes(sandbox_url), "the sandbox service has no /v1/sessions routes yet")
    tool = SandboxSessionTool(sandbox_url, None, timeout_s=10)
    env = CodeToolEnvironment(tool, "delayed")
    env.reset(ROW)
    try:
        first = env.step("```python\nx = 12 * 34\n```\nthen\n```python\ny = x + 5\nprint(y)\n```<tool_call>")
        assert first.observation == "\n```output\n413\n```\n", first.observation
        assert first.info["tool_errors"] == 0.0 and first.info["delayed_calls"] == 1.0
        again = env.step("```python\nprint(y * 2)\n```<tool_call>")  # the namespace persists
        assert again.observation == "\n```output\n826\n```\n"
        failed = env.step("```python\n1 / 0\n```<tool_call>")
        assert "ZeroDivisionError" in failed.observation and failed.info["tool_errors"] == 1.0
        network = env.step("```python\nimport socket\nsocket.create_connection(('1.1.1.1', 53), 2)\n```<tool_call>")
        assert network.info["tool_errors"] == 1.0  # no network inside the session
        session = env.session
        assert session is not None and session.session_id is not None
        sid = session.session_id
    finally:
        env.close()
    gone = httpx.post(sandbox_url + f"/v1/sessions/{sid}/execute", json={"code": "print(1)"}, timeout=30)
    assert gone.status_code in (404, 409)
    tool.close()


def test_an_unreachable_sandbox_is_a_counted_tool_error() -> None:
    env = CodeToolEnvironment(SandboxSessionTool("http://127.0.0.1:9", None, request_timeout_s=2), "delayed")
    result = env.step("```python\nprint(1)\n```<tool_call>")
    assert result.info["tool_errors"] == 1.0 and "tool error" in result.observation
    env.close()


pytestmark = pytest.mark.timeout(300)

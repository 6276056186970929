"""SandboxFusion-compatible ``POST /run_code`` on the verifier: forwarded, as it is, to the sandbox service.

The verifier holds the platform's credentials, so it runs no untrusted code itself; this route
exists so that clients configured with the verifier's (or the gateway's) address keep working.
The sandbox's answer, statuses included, is passed back unchanged; when the sandbox cannot be
reached the answer is SandboxFusion's ``SandboxError`` (a platform fault the clients retry).
"""

from __future__ import annotations

import socket
from typing import Any

import httpx

from services.common.service_client import service_client
from services.common.settings import get_settings

FORWARD_MARGIN_S = 30.0


async def forward_run_code(body: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    headers = {"Authorization": f"Bearer {settings.sandbox_token}"} if settings.sandbox_token else {}
    run_s = float(body.get("run_timeout") or settings.sandbox_timeout_s)
    timeout = run_s + float(body.get("compile_timeout") or 10.0) + FORWARD_MARGIN_S
    try:
        async with service_client("sandbox", timeout_s=timeout, headers=headers) as client:
            response = await client.post("/run_code", json=body)
    except (RuntimeError, httpx.HTTPError) as exc:
        return _sandbox_error(f"the sandbox service is unreachable: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return _sandbox_error(f"the sandbox service answered {response.status_code}: {response.text[:300]}")
    answer: dict[str, Any] = response.json()
    return answer


def _sandbox_error(message: str) -> dict[str, Any]:
    return {"status": "SandboxError", "message": message, "compile_result": None, "run_result": None,
            "executor_pod_name": socket.gethostname(), "files": {}}

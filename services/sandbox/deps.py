"""The sandbox service's dependencies: its callers prove themselves with a shared token, not an API key.

The sandbox holds no credentials (no database URL, so it cannot look API keys up): the
verifier calls it on the platform's behalf. When ``REWARDHUB_SANDBOX_TOKEN`` is
set, every run needs ``Authorization: Bearer <token>``; the token grants nothing but sandbox
runs. When it is empty (the embedded default, or a cluster whose NetworkPolicy admits only the
platform's pods) runs need no token.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from services.common.errors import Unauthorized
from services.common.settings import Settings, get_settings
from services.sandbox.runner import PROJECT_HEADER
from services.sandbox.sessions import SessionRegistry


def _settings() -> Settings:
    return get_settings()


def require_caller(settings: Annotated[Settings, Depends(_settings)],
                   authorization: Annotated[str | None, Header()] = None) -> None:
    expected = settings.sandbox_token
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("the sandbox needs its caller's token (Authorization: Bearer <REWARDHUB_SANDBOX_TOKEN>)",
                           field="Authorization")


Caller = Annotated[None, Depends(require_caller)]
SandboxSettings = Annotated[Settings, Depends(_settings)]
# The tenant a run is counted against (runner.RunSlots): sent by the verifier, which knows the key's
# project; only callers holding the sandbox's token get here when one is set.
CallerProject = Annotated[str | None, Header(alias=PROJECT_HEADER, max_length=128)]


def _sessions(request: Request) -> SessionRegistry:
    registry: SessionRegistry = request.app.state.sessions
    return registry


# This process's tool sessions (app.state, made by create_app).
Sessions = Annotated[SessionRegistry, Depends(_sessions)]

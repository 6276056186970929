"""Stateful tool sessions: create, execute, inspect, close (``sessions.py`` holds the logic)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response

from services.common.sandbox_api import (
    SessionCreated,
    SessionCreateRequest,
    SessionExecuteRequest,
    SessionExecuteResponse,
    SessionInfo,
)
from services.sandbox.deps import Caller, CallerProject, SandboxSettings, Sessions

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SessionId = Path(max_length=128, description="The id `POST /v1/sessions` answered.")
ERRORS = {404: {"description": "session_not_found: an unknown id, or another project's"},
          409: {"description": "session_ended: the session is over (GET says why); create a new one"},
          429: {"description": "sessions_exhausted: the sandbox's or the project's cap of live sessions"}}


@router.post("", response_model=SessionCreated, status_code=201, responses={429: ERRORS[429]})
async def create_session(body: SessionCreateRequest, _caller: Caller, settings: SandboxSettings,
                         sessions: Sessions, project: CallerProject = None) -> SessionCreated:
    """Start a persistent Python namespace in its own sandbox (as isolated as a one-shot run)."""
    return await sessions.create(body, settings, project=project)


@router.post("/{session_id}/execute", response_model=SessionExecuteResponse,
             responses={404: ERRORS[404], 409: ERRORS[409]})
async def execute(body: SessionExecuteRequest, _caller: Caller, settings: SandboxSettings, sessions: Sessions,
                  session_id: str = SessionId, project: CallerProject = None) -> SessionExecuteResponse:
    """Run code in the session's namespace: success, runtime_error (the traceback in stderr) or timeout
    (the session is then killed and ended)."""
    return await sessions.execute(session_id, body, settings, project=project)


@router.get("/{session_id}", response_model=SessionInfo, responses={404: ERRORS[404]})
async def get_session(_caller: Caller, sessions: Sessions, session_id: str = SessionId,
                      project: CallerProject = None) -> SessionInfo:
    """Whether the session is live, why it ended, and when it expires if left idle."""
    return sessions.info(session_id, project)


@router.delete("/{session_id}", status_code=204, response_class=Response, responses={404: ERRORS[404]})
async def close_session(_caller: Caller, sessions: Sessions, session_id: str = SessionId,
                        project: CallerProject = None) -> Response:
    """Kill the session's processes and end it; a second DELETE of one's own session is 204 too."""
    await sessions.close(session_id, project)
    return Response(status_code=204)

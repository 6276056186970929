"""rec_rm's route dependencies: the project a path names (checked against the key) and the LLM backend."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends

from services.common.auth import TrainerOrAdmin
from services.common.db import SessionDep as SessionDep
from services.common.llm.factory import backend_from_settings
from services.common.llm.types import ChatBackend, LLMBackendError
from services.common.settings import get_settings
from services.common.validation import ProjectIdPath
from services.rec_rm.operations import check_project

_BACKENDS: dict[tuple[Any, ...], ChatBackend | None] = {}
_LOCK = threading.Lock()


def project_of(project_id: ProjectIdPath, principal: TrainerOrAdmin) -> str:
    """The path's project; 404 when it is not one of the key's (another tenant's ids are absent)."""
    return check_project(principal, project_id)


def llm_backend() -> ChatBackend | None:
    """The configured LLM backend for the judge options; None when none is configured."""
    s = get_settings()
    key = (s.llm_base_url, s.llm_model, s.llm_api_key, s.llm_timeout_s, s.llm_local_model_path)
    with _LOCK:
        if key not in _BACKENDS:
            try:
                _BACKENDS[key] = backend_from_settings()
            except (LLMBackendError, ValueError):
                _BACKENDS[key] = None
        return _BACKENDS[key]


ProjectPath = Annotated[str, Depends(project_of)]
Backend = Annotated[ChatBackend | None, Depends(llm_backend)]

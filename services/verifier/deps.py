"""The verifier's route dependencies: who is calling, with the caller's project scope set for the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.common.auth import Principal, Scorer, TrainerOrAdmin
from services.common.service_client import tenant_of, tenant_var


def _as_tenant(principal: Principal) -> Principal:
    # Graders and the sandbox forward the caller's project scope (its fair share of sandbox runs).
    tenant_var.set(tenant_of(principal.key_id, principal.project_ids, principal.all_projects))
    return principal


# Async on purpose: a sync dependency runs in a worker thread, whose context variables the route never sees.
async def grading_caller(principal: Scorer) -> Principal:
    """/v1/grade is what the gateway's /v1/rewards fans out to, with the caller's key: reward tokens too."""
    return _as_tenant(principal)


async def code_runner(principal: TrainerOrAdmin) -> Principal:
    return _as_tenant(principal)


GradingCaller = Annotated[Principal, Depends(grading_caller)]
CodeRunner = Annotated[Principal, Depends(code_runner)]

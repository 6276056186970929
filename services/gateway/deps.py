"""The gateway's route dependencies: the request's session, who is calling, and its input types."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Path, Query

from services.common.auth import Principal, Scorer, limit_reward_token, principal_for_key
from services.common.db import SessionDep as SessionDep
from services.common.errors import Forbidden
from services.common.models import Role
from services.common.settings import get_settings


def reward_caller(principal: Scorer) -> Principal:
    """Who may score: admin, trainer, and reward-scoped tokens (rate-limited)."""
    limit_reward_token(principal, get_settings().reward_token_requests_per_s)
    return principal


RewardCaller = Annotated[Principal, Depends(reward_caller)]
RewardTokenPath = Annotated[str, Path(min_length=8, max_length=200, description=(
    "A reward-scoped token (`rewardhub keys create --role reward`): it can only score."))]


def path_reward_token(token: RewardTokenPath) -> Principal:
    principal = principal_for_key(token)
    if principal.role != Role.reward:
        # Only reward tokens may ride in a URL: a logged URL must never carry a key that administers.
        raise Forbidden("only a reward-scoped token (role reward) may be given in the URL path; send other "
                        "keys as Authorization: Bearer", field="token")
    limit_reward_token(principal, get_settings().reward_token_requests_per_s)
    return principal


PathRewardToken = Annotated[Principal, Depends(path_reward_token)]
SpecRefQuery = Annotated[str, Query(min_length=1, max_length=120, description="Stored spec, `name@version`.")]
OnNonOkQuery = Annotated[Literal["zero", "error"], Query(description=(
    "Items that cannot be graded: score 0.0 and flagged in extra_logs, or fail the request."))]
SpecRefPath = Annotated[str, Path(max_length=120, description="`name` or `name@version`")]



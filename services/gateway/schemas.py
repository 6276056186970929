"""Pydantic I/O of the gateway's tenancy API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewardhub.reward_specs import RewardSpec
from services.common.models import Role
from services.common.reward_api import GradeResponse, RewardItem, cap_batch
from services.common.validation import ID_PATTERN, NameText, StoredText


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameText = Field(min_length=1, max_length=200, description="Unique project name.")
    description: StoredText = Field(default="", max_length=2000)


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    created_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: StoredText = Field(default="", max_length=200)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    role: Role
    all_projects: bool
    project_ids: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. It is shown only this once; store it now.")


class Me(BaseModel):
    key_id: str
    role: Role
    all_projects: bool
    project_ids: list[str]


class RewardSpecCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StoredText = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                             description="Spec name; each POST with the same name adds a version.")
    spec: RewardSpec
    description: StoredText = Field(default="", max_length=2000)


class RewardSpecOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    project_id: str
    name: str
    version: int
    ref: str
    spec: dict[str, Any]
    description: str
    created_at: datetime


class RewardsRequest(BaseModel):
    """Public `/v1/rewards` request: a batch and either an inline spec or a stored one."""

    model_config = ConfigDict(extra="forbid")

    project_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="Needed when the key has more than one project.")
    spec: RewardSpec | None = Field(default=None, description="An inline spec.")
    spec_ref: StoredText | None = Field(default=None, max_length=120,
                                        description="A stored spec: `name@version`, or `name` for the latest.")
    items: list[RewardItem] = Field(min_length=1)
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    persist: bool = Field(default=False, description="Store per-item results in the project.")
    stream: bool = Field(default=False, description="Answer NDJSON, one result per line as items finish.")
    idempotency_key: StoredText | None = Field(default=None, min_length=1, max_length=200,
                                               description="Or the Idempotency-Key header.")

    @field_validator("items")
    @classmethod
    def _cap_items(cls, items: list[RewardItem]) -> list[RewardItem]:
        return cap_batch(items)

    @model_validator(mode="after")
    def _one_spec(self) -> RewardsRequest:
        if (self.spec is None) == (self.spec_ref is None):
            raise ValueError("give exactly one of spec (inline) or spec_ref (stored)")
        return self


class RewardsResponse(GradeResponse):
    request_id: str
    project_id: str
    spec_ref: str


class OpenRLHFRewardRequest(BaseModel):
    """OpenRLHF's remote reward-model request (`--remote_rm_url`)."""

    model_config = ConfigDict(extra="allow")

    query: list[StoredText] = Field(min_length=1, description="Prompt + response texts.")
    prompts: list[StoredText] | None = Field(default=None, description="The prompts, same order as query.")
    labels: list[Any] | None = Field(default=None, description="Ground truths, same order as query.")

    @model_validator(mode="after")
    def _same_lengths(self) -> OpenRLHFRewardRequest:
        n = len(self.query)
        for name in ("prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries but query has {n}; they must match")
        return self


class OpenRLHFRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]

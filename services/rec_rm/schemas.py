"""rec_rm's request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rewardhub.reward_specs import Constraint
from services.common.validation import StoredText
from services.rec_rm.config import RecConfig

Dimension = Literal["instruction", "factual", "relevance", "behaviour"]
ItemStatus = Literal["ok", "invalid_input", "timeout", "error"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CatalogVersionOut(BaseModel):
    id: str
    project_id: str
    version: int
    source_format: str
    n_items: int
    created_at: datetime


class ItemIn(_In):
    item_id: StoredText = Field(min_length=1, max_length=200)
    title: StoredText = Field(min_length=1, max_length=2000)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ItemOut(BaseModel):
    item_id: str
    title: str
    attributes: dict[str, Any]


class InteractionImportOut(BaseModel):
    import_id: str
    project_id: str
    imported: int
    first_timestamp: datetime
    last_timestamp: datetime


class InteractionOut(BaseModel):
    id: str
    user_id: str
    item_id: str
    event: str
    timestamp: datetime
    context: dict[str, Any]
    import_id: str


class RewardConfigOut(BaseModel):
    id: str | None = Field(description="null: the defaults (the project stored no configuration yet).")
    project_id: str
    version: int | None
    config: RecConfig
    created_at: datetime | None


class TrainRequest(_In):
    positive_events: list[StoredText] = Field(default_factory=lambda: ["click", "order"], min_length=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of the latest events held out.")
    max_iter: int = Field(default=100, ge=1, le=2000)
    learning_rate: float = Field(default=0.1, gt=0, le=1)
    catalog_version: int | None = Field(default=None, ge=1, description="Items' attributes from; null: the newest.")
    seed: int = 0


class BehaviourModelOut(BaseModel):
    id: str
    project_id: str
    version: int
    state: str
    stage: str
    total: int
    done: int
    progress: float
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ContextIn(_In):
    items: list[ItemIn] = Field(default_factory=list, max_length=1000,
                                description="Items retrieved for this request: checked before the catalog.")


class ScoreItemIn(_In):
    id: StoredText = Field(min_length=1, max_length=200)
    query: StoredText = Field(default="", max_length=20_000, description="The user's request.")
    response: StoredText = Field(max_length=200_000, description="The agent's reply.")
    user_id: StoredText | None = Field(default=None, max_length=200)
    context: ContextIn = Field(default_factory=ContextIn)
    constraints: list[Constraint] = Field(default_factory=list, description="Extra format constraints of this item.")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema",
                                               description="This item's reply schema (replaces the configuration's).")
    n_items: int | None = Field(default=None, ge=0, le=1000, description="How many items the reply must recommend.")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ScoreRequest(_In):
    project_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    catalog_version: int | None = Field(default=None, ge=1, description="null: the newest.")
    dimensions: list[Dimension] | None = Field(default=None, description="null: every dimension with a weight > 0.")
    config: RecConfig | None = Field(default=None, description="Overrides the project's stored configuration.")
    items: list[ScoreItemIn] = Field(min_length=1, max_length=10_000)
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Budget of the format checks and LLM calls.")


class DimensionOut(BaseModel):
    status: ItemStatus
    score: float | None
    evidence: dict[str, Any]


class ScoreResultOut(BaseModel):
    id: str
    status: ItemStatus
    score: float | None = Field(description="The hybrid reward; null unless status is ok.")
    vetoed_by: list[str]
    reason: str | None
    dimensions: dict[str, DimensionOut]


class ScoreResponse(BaseModel):
    catalog_version: int | None
    config_version: int | None
    behaviour_model_version: int | None
    results: list[ScoreResultOut]

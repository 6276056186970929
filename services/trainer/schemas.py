"""Trainer service I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.validation import ID_PATTERN
from trainer.config import RunConfig


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="The project the run belongs to; optional when the key has one.")
    name: str = Field(default="", max_length=200)
    config: RunConfig


class RunOut(BaseModel):
    id: str
    project_id: str
    name: str
    status: str
    current_step: int
    max_steps: int
    cancel_requested: bool
    last_metrics: dict[str, Any]
    checkpoint: str | None
    error: str | None
    output_dir: str
    config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class StepMetricsOut(BaseModel):
    step: int
    metrics: dict[str, Any]
    created_at: datetime


class RunMetricsOut(BaseModel):
    run_id: str
    steps: list[StepMetricsOut]
    next_after_step: int = Field(description="Pass as after_step to read the following page.")

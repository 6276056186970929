"""Trainer service I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from services.common.validation import ID_PATTERN, StoredText
from services.trainer.models import RunStepMetrics, TrainingDataset, TrainingRun
from trainer.config import RunConfig

# Keys that would let a caller choose a server-side credential; named in their own error message.
_SECRET_WORDS = ("env", "key", "token", "secret", "password", "credential", "header", "auth")


def _names_a_secret(loc: tuple[int | str, ...]) -> bool:
    return bool(loc) and isinstance(loc[-1], str) and any(word in loc[-1].lower() for word in _SECRET_WORDS)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="The project the run belongs to; optional when the key has one.")
    name: StoredText = Field(default="", max_length=200)
    config: RunConfig = Field(description="The run config (see README: Training). Its dataset names one of the "
                              "project's datasets; output_dir is chosen by the service; the run authenticates with "
                              "a key minted for it, so no field may name an environment variable or secret.")

    @field_validator("config", mode="wrap")
    @classmethod
    def _no_secret_fields(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> RunConfig:
        """Say plainly why ``reward.api_key_env`` (or any field naming a secret) is refused, at its path."""
        try:
            return cast(RunConfig, handler(value))
        except ValidationError as exc:
            secret = [e for e in exc.errors() if e["type"] == "extra_forbidden" and _names_a_secret(e["loc"])]
            if not secret:
                raise
            raise ValidationError.from_exception_data("RunCreate", [InitErrorDetails(
                type=PydanticCustomError("secret_field", "a run started through the service cannot name an "
                                         "environment variable or secret: it authenticates with an API key "
                                         "minted for the run"), loc=e["loc"], input=e["input"])
                for e in secret]) from None


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
    attempt: int = Field(description="Launches of this run so far (created, resumed by hand or automatically).")
    auto_resumes: int = Field(description="Times the run was resumed automatically after its worker died.")
    heartbeat_at: datetime | None = Field(description="The last heartbeat of the run's worker (its lease); "
                                          "null once the run has ended.")

    @classmethod
    def from_run(cls, run: TrainingRun) -> RunOut:
        return cls(id=run.id, project_id=run.project_id, name=run.name, status=run.status.value,
                   current_step=run.current_step, max_steps=run.max_steps, cancel_requested=run.cancel_requested,
                   last_metrics=run.last_metrics or {}, checkpoint=run.checkpoint, error=run.error,
                   output_dir=run.output_dir, config=run.config, created_at=run.created_at,
                   started_at=run.started_at, finished_at=run.finished_at, attempt=run.attempt,
                   auto_resumes=run.auto_resumes, heartbeat_at=run.heartbeat_at)


class StepMetricsOut(BaseModel):
    step: int
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: RunStepMetrics) -> StepMetricsOut:
        return cls(step=row.step, metrics=row.metrics, created_at=row.created_at)


class DatasetOut(BaseModel):
    name: str = Field(description="What a run config's `dataset` names.")
    format: str = Field(description="jsonl or parquet.")
    rows: int
    size_bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_dataset(cls, dataset: TrainingDataset) -> DatasetOut:
        return cls(name=dataset.name, format=dataset.format, rows=dataset.rows, size_bytes=dataset.size_bytes,
                   sha256=dataset.sha256, created_at=dataset.created_at)

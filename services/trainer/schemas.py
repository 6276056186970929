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


class StepMetricsOut(BaseModel):
    step: int
    metrics: dict[str, Any]
    created_at: datetime


class RunMetricsOut(BaseModel):
    run_id: str
    steps: list[StepMetricsOut]
    next_after_step: int = Field(description="Pass as after_step to read the following page.")


class DatasetOut(BaseModel):
    name: str = Field(description="What a run config's `dataset` names.")
    format: str = Field(description="jsonl or parquet.")
    rows: int
    size_bytes: int
    sha256: str
    created_at: datetime


class DatasetPage(BaseModel):
    data: list[DatasetOut]
    next_cursor: str | None = Field(description="Pass as `cursor` to read the next page; null on the last page.")

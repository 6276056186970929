"""Evaluation job I/O: what starts a job, and the job as the API shows it (progress included)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.validation import ID_PATTERN, StoredText
from services.trainer.models import EvaluationJob


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="The project the job belongs to; optional when the key has one.")
    name: StoredText = Field(default="", max_length=200)
    kind: Literal["model", "dining", "sts"] = Field(description="model: a checkpoint's avg@k/pass@k; dining: "
                                                    "DiningBench against the configured VLM; sts: the STS "
                                                    "transferability score.")
    config: dict[str, Any] = Field(description="The kind's config (see README: Evaluation jobs); checked field "
                                   "by field, a 422 names the first bad one (config.<field>).")


class Progress(BaseModel):
    stage: str = Field(description="queued, starting, loading, sampling / inference / sae, shift, scores, "
                       "validate, report, then done, failed or cancelled.")
    done: int = Field(description="Items finished: prompts (model), records (dining), stages and target "
                      "domains (sts).")
    total: int
    resumed: int = Field(description="Of done, the items an earlier attempt finished (not redone).")
    fraction: float | None


class EvaluationOut(BaseModel):
    id: str
    project_id: str
    name: str
    kind: str
    status: str
    progress: Progress
    cancel_requested: bool
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any] | None = Field(description="The report once the job has succeeded.")
    output_dir: str
    attempt: int
    auto_resumes: int
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: EvaluationJob) -> EvaluationOut:
        total = job.total_items
        progress = Progress(stage=job.stage, done=job.done_items, total=total, resumed=job.resumed_items,
                            fraction=round(job.done_items / total, 4) if total else None)
        return cls(id=job.id, project_id=job.project_id, name=job.name, kind=job.kind, status=job.status.value,
                   progress=progress, cancel_requested=job.cancel_requested, error=job.error, config=job.config,
                   metrics=job.metrics, output_dir=job.output_dir, attempt=job.attempt,
                   auto_resumes=job.auto_resumes, heartbeat_at=job.heartbeat_at, created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at)


class EvaluationResults(BaseModel):
    id: str
    kind: str
    status: str
    metrics: dict[str, Any]
    samples_url: str = Field(description="The per-sample JSONL (model: one line per sample; dining: per record; "
                             "sts: per target domain).")

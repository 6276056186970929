"""Training runs and their per-step metrics.

A run's worker holds a heartbeat lease on its row: ``attempt`` names the launch that owns it (every
write of a worker is conditional on it), ``supervisor`` the service process that launched it, and
``heartbeat_at`` is stamped by the worker on a timer. Watchers end or resume a run whose heartbeat
went stale (services/trainer/supervisor.py).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.models import new_id


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


# The statuses in which a run has (or is about to get) a worker.
LIVE_STATUSES = (RunStatus.queued, RunStatus.running)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_status_heartbeat_at", "status", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, native_enum=False, length=16), default=RunStatus.queued)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_dir: Mapped[str] = mapped_column(String(1000))
    # Set by POST .../cancel; the worker reads it between steps and stops after a checkpoint.
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int] = mapped_column(Integer)
    last_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checkpoint: Mapped[str | None] = mapped_column(String(1000), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    # The lease. ``attempt`` grows by one each time the run is queued (created, resumed by hand or
    # automatically); a worker writes only while the row still carries its attempt. ``supervisor``
    # ("host:pid" of the service process that launched the attempt) is None on a queued run that
    # waits for a trainer service to launch it.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0)
    supervisor: Mapped[str | None] = mapped_column(String(255), default=None)
    worker_host: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key minted for the run (its worker's only credential); revoked when the run ends. The
    # clear key is never stored: the worker receives it at launch.
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class RunStepMetrics(Base):
    __tablename__ = "training_run_metrics"
    __table_args__ = (Index("ix_training_run_metrics_run_step", "run_id", "step", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingDataset(Base):
    """A prompt dataset uploaded to a project; its file lives in ``<data_dir>/projects/<id>/datasets/``."""

    __tablename__ = "training_datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(120))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvaluationJob(Base):
    """An evaluation job (kind ``model``, ``dining`` or ``sts``), supervised like a training run.

    It has the run's lease columns (``attempt``, ``supervisor``, ``heartbeat_at``…; see
    :class:`TrainingRun`), so the same launcher, watchers and dead-attempt rules apply
    (services/trainer/runs.py ``JobKind``). Progress is ``stage`` and ``done_items``/``total_items``,
    written by the worker; ``metrics`` holds the finished report. Per-item results live in the job's
    folder (``output_dir``), which is what a resumed attempt reads to skip finished work.
    """

    __tablename__ = "evaluation_jobs"
    __table_args__ = (Index("ix_evaluation_jobs_status_heartbeat_at", "status", "heartbeat_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, native_enum=False, length=16), default=RunStatus.queued)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_dir: Mapped[str] = mapped_column(String(1000))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    done_items: Mapped[int] = mapped_column(Integer, default=0)
    total_items: Mapped[int] = mapped_column(Integer, default=0)
    # Items this attempt found finished by an earlier one and did not redo.
    resumed_items: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0)
    supervisor: Mapped[str | None] = mapped_column(String(255), default=None)
    worker_host: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

"""The rubric store and rubric jobs.

A stored rubric is keyed by project, the SHA-256 of its instruction and the generator version
that made it; each key holds numbered versions (1, 2, ...), so a regenerated rubric never
overwrites the one earlier results were judged with. A rubric job is one large judge or generate
batch run on a Celery worker, with its progress counted in the row (any process can read it) and
each finished item checkpointed in ``rubric_job_items``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.models import new_id


class StoredRubric(Base):
    """One version of the rubric for (project, instruction hash, generator version)."""

    __tablename__ = "rubric_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "instruction_hash", "generator_version", "version",
                         name="uq_rubric_versions_cache_key_version"),
        Index("ix_rubric_versions_cache_key", "project_id", "instruction_hash", "generator_version"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    instruction_hash: Mapped[str] = mapped_column(String(64))
    generator_version: Mapped[str] = mapped_column(String(300))
    version: Mapped[int] = mapped_column(Integer)
    instruction: Mapped[str] = mapped_column(Text)
    # hard_rules and principles, as the Rubric schema dumps them.
    rubric: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobState(enum.StrEnum):
    # Accepted and committed, not yet handed to the broker (the API submits right after the commit;
    # the sweeper submits it if that never happened). Shown as "queued" by the API.
    pending_submit = "pending_submit"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class RubricJob(Base):
    """A batch of judge or generate items run by a worker; ``done`` of ``total`` is the progress."""

    __tablename__ = "rubric_jobs"
    __table_args__ = (Index("ix_rubric_jobs_state", "state"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16), default=JobState.queued)
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # Durability: when it was last handed to the broker; which attempt holds it while running, and
    # that attempt's heartbeat (stale: its worker died, the sweeper requeues it); attempts so far.
    submitted_at: Mapped[datetime | None] = mapped_column(default=None)
    owner: Mapped[str | None] = mapped_column(String(32), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RubricJobItem(Base):
    """A finished item of a rubric job, stored as it finishes: a rerun of the job skips it."""

    __tablename__ = "rubric_job_items"

    job_id: Mapped[str] = mapped_column(ForeignKey("rubric_jobs.id", ondelete="CASCADE"), primary_key=True)
    item_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)

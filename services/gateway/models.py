"""Gateway tables: versioned reward specs, persisted reward results (idempotency records: services.common.idempotency)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.idempotency import IdempotencyRecord
from services.common.models import new_id

__all__ = ["IdempotencyRecord", "RewardResultRecord", "RewardSpecRecord"]  # the idempotency table is shared


class RewardSpecRecord(Base):
    """One version of a named reward spec; versions are immutable and numbered from 1."""

    __tablename__ = "reward_specs"
    __table_args__ = (UniqueConstraint("project_id", "name", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RewardResultRecord(Base):
    """A persisted per-item reward (when the request asks for persistence)."""

    __tablename__ = "reward_results"
    __table_args__ = (Index("ix_reward_results_project_request", "project_id", "request_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    request_id: Mapped[str] = mapped_column(String(32))
    item_id: Mapped[str] = mapped_column(String(200))
    spec_ref: Mapped[str] = mapped_column(String(120), default="inline")
    score: Mapped[float | None] = mapped_column(Float, default=None)
    status: Mapped[str] = mapped_column(String(16))
    sub_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    elapsed_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

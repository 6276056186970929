"""rec_rm's tables: versioned item catalogs, interaction logs, reward configurations, behaviour models.

Every row belongs to a tenancy project. A catalog import makes a new catalog version (1, 2, ...)
holding its own copy of the items, so an older version stays readable and scores made against it
can be reproduced. Reward configurations are versioned the same way (the newest is in force).
A behaviour model is one training job (state, progress ``done`` of ``total``) and, once it has
succeeded, the fitted model and its held-out metrics.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.models import new_id


class CatalogVersion(Base):
    """One import of a project's item catalog."""

    __tablename__ = "rec_rm_catalog_versions"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_rec_rm_catalog_versions_project_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_format: Mapped[str] = mapped_column(String(16))
    n_items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CatalogItem(Base):
    """An item of one catalog version: ``{item_id, title, attributes{}}``."""

    __tablename__ = "rec_rm_catalog_items"
    __table_args__ = (Index("ix_rec_rm_catalog_items_title_key", "catalog_version_id", "title_key"),)

    catalog_version_id: Mapped[str] = mapped_column(ForeignKey("rec_rm_catalog_versions.id", ondelete="CASCADE"),
                                                    primary_key=True)
    item_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    # The title case-folded with white space collapsed: how a reply naming an item by title finds it.
    title_key: Mapped[str] = mapped_column(String(300))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)


class Interaction(Base):
    """One logged event of a user on an item (``click``, ``order``, ``impression``...)."""

    __tablename__ = "rec_rm_interactions"
    __table_args__ = (
        Index("ix_rec_rm_interactions_user", "project_id", "user_id", "timestamp"),
        Index("ix_rec_rm_interactions_item", "project_id", "item_id"),
        Index("ix_rec_rm_interactions_time", "project_id", "timestamp", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(200))
    item_id: Mapped[str] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[datetime] = mapped_column()
    context: Mapped[dict[str, Any]] = mapped_column(JSON)
    import_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RewardConfig(Base):
    """One version of a project's hybrid reward configuration (weights, gates, scorer options)."""

    __tablename__ = "rec_rm_reward_configs"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_rec_rm_reward_configs_project_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class BehaviourModel(Base):
    """A user-behaviour model: its training job's state and progress, then the model and its metrics."""

    __tablename__ = "rec_rm_behaviour_models"
    __table_args__ = (UniqueConstraint("project_id", "version", name="uq_rec_rm_behaviour_models_project_version"),
                      Index("ix_rec_rm_behaviour_models_state", "state"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[ModelState] = mapped_column(Enum(ModelState, native_enum=False, length=16),
                                              default=ModelState.queued)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The fitted estimator and its feature spec, pickled (written and read only by this service).
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # Stamped every job_heartbeat_s while training; a stale one means its worker died (the sweeper requeues it).
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

"""Tenancy tables every service reads: projects and API keys (owned by the gateway's API)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Column, Enum, ForeignKey, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.common.db import Base, utcnow


def new_id() -> str:
    return uuid.uuid4().hex


class Role(enum.StrEnum):
    admin = "admin"
    trainer = "trainer"
    annotator = "annotator"
    # Reward scope only: /v1/rewards and /get_reward (and the grading they fan out to), rate-limited.
    # Safe to put in a URL (OpenRLHF's --reward.remote_url): a leaked log line can score, nothing more.
    reward = "reward"


api_key_projects = Table(
    "api_key_projects",
    Base.metadata,
    Column("api_key_id", ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("project_id", ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("prefix"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The first characters of the key, kept in clear so a key can be recognised in lists and logs.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    # Only the bootstrap admin (CLI or `rewardhub up`) sees every project.
    all_projects: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    projects: Mapped[list[Project]] = relationship(secondary=api_key_projects, lazy="selectin")

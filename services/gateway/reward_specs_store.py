"""Versioned reward specs stored per project (`name@version`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rewardhub.reward_specs import parse_spec_ref
from services.common.errors import Conflict, InvalidInput, NotFound
from services.gateway.models import RewardSpecRecord
from services.gateway.schemas import RewardSpecOut


def spec_out(record: RewardSpecRecord) -> RewardSpecOut:
    return RewardSpecOut(id=record.id, project_id=record.project_id, name=record.name, version=record.version,
                         ref=f"{record.name}@{record.version}", spec=record.spec, description=record.description,
                         created_at=record.created_at)


def add_version(session: Session, project_id: str, name: str, spec: dict[str, Any], description: str) -> RewardSpecRecord:
    """Store ``spec`` as the next version of ``name``; versions are never overwritten."""
    latest = session.scalar(select(func.max(RewardSpecRecord.version)).where(
        RewardSpecRecord.project_id == project_id, RewardSpecRecord.name == name)) or 0
    record = RewardSpecRecord(project_id=project_id, name=name, version=latest + 1, spec=spec,
                              description=description)
    session.add(record)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent POST took this version number
        raise Conflict(f"spec {name!r} was changed concurrently; retry", field="name") from exc
    return record


def list_latest(session: Session, project_id: str) -> list[RewardSpecRecord]:
    records = session.scalars(select(RewardSpecRecord).where(RewardSpecRecord.project_id == project_id)
                              .order_by(RewardSpecRecord.name, RewardSpecRecord.version))
    latest: dict[str, RewardSpecRecord] = {}
    for record in records:
        latest[record.name] = record
    return list(latest.values())


def list_versions(session: Session, project_id: str, name: str) -> list[RewardSpecRecord]:
    records = list(session.scalars(select(RewardSpecRecord).where(
        RewardSpecRecord.project_id == project_id, RewardSpecRecord.name == name)
        .order_by(RewardSpecRecord.version)))
    if not records:
        raise NotFound(f"no reward spec named {name!r} in this project", field="name")
    return records


def resolve(session: Session, project_id: str, ref: str, *, field: str = "spec_ref") -> RewardSpecRecord:
    try:
        name, version = parse_spec_ref(ref)
    except ValueError as exc:
        raise InvalidInput(str(exc), field=field) from exc
    query = select(RewardSpecRecord).where(RewardSpecRecord.project_id == project_id,
                                           RewardSpecRecord.name == name)
    if version is None:
        query = query.order_by(RewardSpecRecord.version.desc()).limit(1)
    else:
        query = query.where(RewardSpecRecord.version == version)
    record = session.scalar(query)
    if record is None:
        raise NotFound(f"no reward spec {ref!r} in this project", field=field)
    return record

"""Versioned reward specs stored per project (`name@version`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from rewardhub.reward_specs import parse_spec_ref
from services.common import idempotency
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.pagination import Page, keyset_page
from services.gateway.models import RewardSpecRecord
from services.gateway.schemas import RewardSpecCreate, RewardSpecOut

IDEMPOTENCY_ENDPOINT = "gateway/reward-specs"


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


def create_version(session: Session, project_id: str, body: RewardSpecCreate,
                   idempotency_key: str | None) -> RewardSpecOut | idempotency.Stored:
    """Store the next version of ``body.name``, or the stored answer of an earlier request with the key.

    The key's answer commits in the same transaction as the version, so a retry never adds a second one.
    """
    request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    if idempotency_key is not None:
        stored = idempotency.replay(session, project_id, IDEMPOTENCY_ENDPOINT, idempotency_key, request_hash)
        if stored is not None:
            return stored
    out = spec_out(add_version(session, project_id, body.name, body.spec.model_dump(mode="json"), body.description))
    if idempotency_key is not None:
        idempotency.remember(session, project_id, IDEMPOTENCY_ENDPOINT, idempotency_key, request_hash, 201,
                             out.model_dump_json())
    return out


def list_latest(session: Session, project_id: str, cursor: str | None, limit: int) -> Page[RewardSpecOut]:
    """The latest version of each of the project's specs, by name, a page at a time."""
    other = aliased(RewardSpecRecord)
    newest = (select(func.max(other.version))
              .where(other.project_id == RewardSpecRecord.project_id, other.name == RewardSpecRecord.name)
              .correlate(RewardSpecRecord).scalar_subquery())
    # One row per name (the newest version), so (name, id) orders the page with a unique key last.
    query = select(RewardSpecRecord).where(RewardSpecRecord.project_id == project_id,
                                           RewardSpecRecord.version == newest)
    rows, next_cursor = keyset_page(session, query, (RewardSpecRecord.name, RewardSpecRecord.id), cursor, limit)
    return Page(data=[spec_out(r) for r in rows], next_cursor=next_cursor)


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

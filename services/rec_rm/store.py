"""rec_rm's database work: catalog versions and their items, interaction logs, reward configurations.

Every function takes the project already checked against the caller's key; an id of another
project is reported absent (404), like everywhere else. A new version number is the project's
current maximum + 1; two writers racing for one number are resolved by the unique constraint
(the loser takes the next number).
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common.errors import NotFound
from services.common.pagination import Page, keyset_page
from services.rec_rm.config import RecConfig
from services.rec_rm.items import Event, Item, title_key
from services.rec_rm.models import CatalogItem, CatalogVersion, Interaction, RewardConfig
from services.rec_rm.schemas import (
    CatalogVersionOut,
    InteractionImportOut,
    InteractionOut,
    ItemOut,
    RewardConfigOut,
)

SAVE_ATTEMPTS = 5
V = TypeVar("V", CatalogVersion, RewardConfig)


def add_versioned(session: Session, row: V) -> V:
    """Insert ``row`` as the project's next version of its kind."""
    kind = type(row)
    for _ in range(SAVE_ATTEMPTS):
        current = session.scalar(select(func.max(kind.version)).where(kind.project_id == row.project_id)) or 0
        row.version = current + 1
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            continue
        return row
    raise RuntimeError(f"could not number a new {kind.__tablename__} row after {SAVE_ATTEMPTS} attempts")


# ------------------------------------------------------------------------------------------ catalogs

def catalog_out(row: CatalogVersion) -> CatalogVersionOut:
    return CatalogVersionOut.model_validate(row, from_attributes=True)


def create_catalog(session: Session, project_id: str, fmt: str, items: list[Item]) -> CatalogVersion:
    version = add_versioned(session, CatalogVersion(project_id=project_id, version=0, source_format=fmt,
                                                    n_items=len(items)))
    session.add_all([CatalogItem(catalog_version_id=version.id, item_id=i.item_id, title=i.title,
                                 title_key=title_key(i.title), attributes=i.attributes) for i in items])
    session.flush()
    return version


def get_catalog(session: Session, project_id: str, version: int | None) -> CatalogVersion:
    """Version ``version`` of the project's catalog, or the newest (None); 404 naming the field."""
    query = select(CatalogVersion).where(CatalogVersion.project_id == project_id)
    if version is None:
        row = session.scalar(query.order_by(CatalogVersion.version.desc()).limit(1))
        if row is None:
            raise NotFound("this project has no catalog yet: import one (POST .../catalogs)", field="catalog_version")
        return row
    row = session.scalar(query.where(CatalogVersion.version == version))
    if row is None:
        raise NotFound(f"catalog version {version} not found", field="catalog_version")
    return row


def list_catalogs(session: Session, project_id: str, cursor: str | None, limit: int) -> Page[CatalogVersionOut]:
    query = select(CatalogVersion).where(CatalogVersion.project_id == project_id)
    rows, next_cursor = keyset_page(session, query, (CatalogVersion.version, CatalogVersion.id), cursor, limit)
    return Page(data=[catalog_out(r) for r in rows], next_cursor=next_cursor)


def item_of(row: CatalogItem) -> Item:
    return Item(item_id=row.item_id, title=row.title, attributes=dict(row.attributes or {}))


def list_items(session: Session, catalog: CatalogVersion, cursor: str | None, limit: int) -> Page[ItemOut]:
    query = select(CatalogItem).where(CatalogItem.catalog_version_id == catalog.id)
    rows, next_cursor = keyset_page(session, query, (CatalogItem.item_id,), cursor, limit)
    return Page(data=[ItemOut(item_id=r.item_id, title=r.title, attributes=r.attributes) for r in rows],
                next_cursor=next_cursor)


def get_item(session: Session, catalog: CatalogVersion, item_id: str) -> ItemOut:
    row = session.get(CatalogItem, (catalog.id, item_id))
    if row is None:
        raise NotFound(f"item {item_id!r} not found in catalog version {catalog.version}", field="item_id")
    return ItemOut(item_id=row.item_id, title=row.title, attributes=row.attributes)


def lookup_items(session: Session, catalog_version_id: str, ids: set[str],
                 title_keys: set[str]) -> tuple[dict[str, Item], dict[str, Item]]:
    """The items with these ids, and those with these title keys, of one catalog version."""
    by_id: dict[str, Item] = {}
    by_title: dict[str, Item] = {}
    id_list, key_list = sorted(ids), sorted(title_keys)
    for start in range(0, max(len(id_list), len(key_list)), 500):
        chunk_ids, chunk_keys = id_list[start:start + 500], key_list[start:start + 500]
        if chunk_ids:
            for row in session.scalars(select(CatalogItem).where(CatalogItem.catalog_version_id == catalog_version_id,
                                                                 CatalogItem.item_id.in_(chunk_ids))):
                by_id[row.item_id] = item_of(row)
        if chunk_keys:
            for row in session.scalars(select(CatalogItem).where(CatalogItem.catalog_version_id == catalog_version_id,
                                                                 CatalogItem.title_key.in_(chunk_keys))):
                by_title.setdefault(row.title_key, item_of(row))
    return by_id, by_title


def catalog_attributes(session: Session, catalog_version_id: str) -> dict[str, dict[str, Any]]:
    """item_id -> attributes of a whole catalog version (for training)."""
    rows = session.execute(select(CatalogItem.item_id, CatalogItem.attributes)
                           .where(CatalogItem.catalog_version_id == catalog_version_id))
    return {item_id: dict(attributes or {}) for item_id, attributes in rows}


# -------------------------------------------------------------------------------------- interactions

def create_interactions(session: Session, project_id: str, events: list[Event]) -> InteractionImportOut:
    import_id = uuid.uuid4().hex
    session.add_all([Interaction(project_id=project_id, user_id=e.user_id, item_id=e.item_id, event=e.event,
                                 timestamp=e.timestamp, context=e.context, import_id=import_id) for e in events])
    session.flush()
    times = [e.timestamp for e in events]
    return InteractionImportOut(import_id=import_id, project_id=project_id, imported=len(events),
                                first_timestamp=min(times), last_timestamp=max(times))


def list_interactions(session: Session, project_id: str, user_id: str | None, cursor: str | None,
                      limit: int) -> Page[InteractionOut]:
    query = select(Interaction).where(Interaction.project_id == project_id)
    if user_id is not None:
        query = query.where(Interaction.user_id == user_id)
    rows, next_cursor = keyset_page(session, query, (Interaction.timestamp, Interaction.id), cursor, limit)
    return Page(data=[InteractionOut.model_validate(r, from_attributes=True) for r in rows], next_cursor=next_cursor)


def all_events(session: Session, project_id: str) -> list[Event]:
    rows = session.execute(select(Interaction.user_id, Interaction.item_id, Interaction.event, Interaction.timestamp,
                                  Interaction.context).where(Interaction.project_id == project_id)
                           .order_by(Interaction.timestamp, Interaction.id))
    return [Event(user_id=u, item_id=i, event=e, timestamp=t, context=c or {}) for u, i, e, t, c in rows]


# ------------------------------------------------------------------------------------ reward configs

def save_config(session: Session, project_id: str, config: RecConfig) -> RewardConfig:
    return add_versioned(session, RewardConfig(project_id=project_id, version=0,
                                               config=config.model_dump(mode="json", by_alias=True)))


def latest_config(session: Session, project_id: str) -> RewardConfigOut:
    row = session.scalar(select(RewardConfig).where(RewardConfig.project_id == project_id)
                         .order_by(RewardConfig.version.desc()).limit(1))
    if row is None:
        return RewardConfigOut(id=None, project_id=project_id, version=None, config=RecConfig(), created_at=None)
    return config_out(row)


def config_out(row: RewardConfig) -> RewardConfigOut:
    return RewardConfigOut(id=row.id, project_id=row.project_id, version=row.version,
                           config=RecConfig.model_validate(row.config), created_at=row.created_at)

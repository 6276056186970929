"""One Alembic history that runs up → down → up on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.common.db import Base
from services.common.migrate import current_heads, downgrade, upgrade
from services.common.model_registry import import_all_models


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _model_drift(url: str) -> list[object]:
    import_all_models()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    import_all_models()
    expected = set(Base.metadata.tables)
    upgrade(url)
    assert _tables(url) == expected
    assert _model_drift(url) == [], "models and migrations disagree: write a migration"
    downgrade(url, "base")
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == expected


def test_one_head() -> None:
    assert len(current_heads()) == 1


def test_sqlite_up_down_up(isolated_env: Path) -> None:
    _round_trip(f"sqlite:///{isolated_env / 'm.db'}")


@pytest.mark.postgres
def test_postgres_up_down_up(postgres_url: str) -> None:
    _round_trip(postgres_url)

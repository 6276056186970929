"""A savepoint on SQLite is nested inside the request's transaction, as on PostgreSQL.

pysqlite begins a transaction only before INSERT/UPDATE/DELETE/REPLACE, so a transaction whose first
write sat in ``begin_nested()`` was started by the SAVEPOINT and committed by its RELEASE: the rows
written inside it survived a rollback of the whole transaction (services/common/db.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.common.db import make_engine


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "savepoint_rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)


@pytest.fixture(params=["file", "memory"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "file" else "sqlite://"
    built = make_engine(url)
    _Base.metadata.create_all(built)
    yield built
    built.dispose()


def count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(_Row)) or 0)


def test_a_first_write_in_a_savepoint_rolls_back_with_the_transaction(engine: Engine) -> None:
    with Session(engine) as session:
        with session.begin_nested():
            session.add(_Row(name="claimed"))
        session.rollback()
    assert count(engine) == 0


def test_a_rolled_back_savepoint_keeps_the_transaction_and_its_earlier_rows(engine: Engine) -> None:
    with Session(engine) as session:
        with session.begin_nested():
            session.add(_Row(name="first"))
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(_Row(name="first"))  # the loser of a unique race
        session.add(_Row(name="second"))
        session.commit()
    with Session(engine) as session:
        assert sorted(session.scalars(select(_Row.name))) == ["first", "second"]


def test_savepoints_commit_with_the_transaction(engine: Engine) -> None:
    with Session(engine) as session:
        with session.begin_nested():
            session.add(_Row(name="a"))
        with session.begin_nested():
            session.add(_Row(name="b"))
        session.commit()
    assert count(engine) == 2

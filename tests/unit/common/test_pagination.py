"""The one pagination envelope: keyset pages over (timestamp, id), on SQLite and real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.common.db import UTCDateTime
from services.common.errors import InvalidInput
from services.common.pagination import decode_cursor, encode_cursor, keyset_page

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class _Base(DeclarativeBase):
    pass


class Row(_Base):
    __tablename__ = "pagination_rows"
    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


@pytest.fixture(params=["sqlite", "postgres"])
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('page')}/page.db"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    _Base.metadata.create_all(engine)
    with Session(engine) as s:
        # Ties on the timestamp (three rows share T0+1s) are broken by id.
        s.add_all([Row(id=f"r{i:02d}", created_at=T0 + timedelta(seconds=min(i, 1) if i < 4 else i))
                   for i in range(10)])
        s.commit()
        yield s
    engine.dispose()


def test_pages_cover_every_row_once_in_order(session: Session) -> None:
    order = (Row.created_at, Row.id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        rows, cursor = keyset_page(session, select(Row), order, cursor, 3)
        seen += [r.id for r in rows]
        pages += 1
        if cursor is None:
            break
    assert seen == [f"r{i:02d}" for i in range(10)] and pages == 4


def test_descending_pages_cover_every_row_once_newest_first(session: Session) -> None:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        rows, cursor = keyset_page(session, select(Row), (Row.created_at, Row.id), cursor, 4, descending=True)
        seen += [r.id for r in rows]
        if cursor is None:
            break
    assert seen == [f"r{i:02d}" for i in reversed(range(10))]


def test_a_row_inserted_before_the_cursor_does_not_shift_the_next_page(session: Session) -> None:
    order = (Row.created_at, Row.id)
    first, cursor = keyset_page(session, select(Row), order, None, 5)
    session.add(Row(id="r00a", created_at=T0))  # sorts into the first page, already read
    session.commit()
    second, _ = keyset_page(session, select(Row), order, cursor, 5)
    assert [r.id for r in first] == ["r00", "r01", "r02", "r03", "r04"]
    assert [r.id for r in second] == ["r05", "r06", "r07", "r08", "r09"]


def test_a_cursor_round_trips_and_a_forged_one_is_a_422_naming_cursor() -> None:
    assert decode_cursor(encode_cursor([T0, "r01"]), 2) == [T0, "r01"]
    for bad in ("%%%", encode_cursor(["only-one"]), "bm90IGpzb24", encode_cursor([1, 2, 3])):
        with pytest.raises(InvalidInput) as error:
            decode_cursor(bad, 2)
        assert error.value.field == "cursor"

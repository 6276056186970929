"""Owner-only data: the data dir 0700, the SQLite file and its -wal/-shm 0600, the admin key 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.db import get_engine, prepare_sqlite_storage
from services.common.settings import get_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022 (or worse) umask: the modes must not depend on it."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_get_engine_makes_the_data_dir_and_database_owner_only(isolated_env: Path, loose_umask: None) -> None:
    settings = get_settings()
    database = settings.data_dir / "rewardhub.db"
    assert not settings.data_dir.exists()
    engine = get_engine()
    assert mode(settings.data_dir) == 0o700
    assert database.exists() and mode(database) == 0o600
    with engine.begin() as conn:  # a write in WAL mode creates -wal and -shm
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    for side in ("-wal", "-shm"):
        path = Path(f"{database}{side}")
        assert path.exists(), f"{path.name} was not created"
        assert mode(path) == 0o600, f"{path.name} is {oct(mode(path))}"


def test_migrating_creates_the_file_owner_only(isolated_env: Path, loose_umask: None) -> None:
    from services.common.migrate import upgrade

    upgrade()
    settings = get_settings()
    assert mode(settings.data_dir) == 0o700
    assert mode(settings.data_dir / "rewardhub.db") == 0o600


def test_existing_loose_files_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    database = data / "old.db"
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.write_bytes(b"")
        os.chmod(path, 0o644)
    prepare_sqlite_storage(f"sqlite:///{database}", data)
    assert mode(data) == 0o700
    assert {mode(p) for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))} == {0o600}


def test_a_database_elsewhere_leaves_its_existing_folder_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    prepare_sqlite_storage(f"sqlite:///{shared / 'x.db'}")
    assert mode(shared) == 0o755 and mode(shared / "x.db") == 0o600
    prepare_sqlite_storage(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'y.db'}")
    assert mode(tmp_path / "new" / "deeper") == 0o700
    prepare_sqlite_storage("sqlite://")  # in memory: nothing to do


def test_the_first_admin_key_file_is_owner_only(isolated_env: Path, loose_umask: None) -> None:
    from rewardhub.embedded import bootstrap

    boot = bootstrap(get_settings())
    assert boot.newly_created and boot.admin_key_file.read_text().strip() == boot.admin_key
    assert mode(boot.admin_key_file) == 0o600
    assert mode(get_settings().data_dir) == 0o700

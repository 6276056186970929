from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REWARDHUB_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'rewardhub.db'}"
    assert settings.is_sqlite
    assert settings.redis_url is None


@pytest.mark.parametrize(("given", "expected"), [
    ("postgres://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_database_url_schemes_are_normalised_to_psycopg3(given: str, expected: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert Settings().effective_database_url == expected
    assert not Settings().is_sqlite


def test_prefixed_and_plain_names_both_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REWARDHUB_REDIS_URL", "redis://x:6379/0")
    assert Settings().redis_url == "redis://x:6379/0"
    monkeypatch.setenv("REWARDHUB_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"

"""No secret is printed or logged: URLs show ``user:***@``; secret settings never reach a log line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from rewardhub import cli
from services.common.logging import SecretMaskingFilter, configure_logging, mask_text, mask_url
from services.common.settings import reset_settings_cache
from tests.conftest import REPO_ROOT

PASSWORD = "Sup3r-S3cret-pw"
DB_URL = f"postgresql+psycopg://rewardhub:{PASSWORD}@db.internal:5432/rewardhub"
MASKED_DB = "postgresql+psycopg://rewardhub:***@db.internal:5432/rewardhub"
REDIS_URL = f"redis://:{PASSWORD}x@cache.internal:6379/0"
SECRET_KEY = "session-signing-key-0123456789"
LLM_KEY = "sk-llm-key-abcdef123456"


# ------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize(("url", "shown"), [
    (DB_URL, MASKED_DB),
    ("postgresql://u:p%40ss%2Fw@h/db", "postgresql://u:***@h/db"),
    ("redis://:hunter22@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://default:hunter22@cache:6380/1", "rediss://default:***@cache:6380/1"),
    ("sqlite:////var/lib/rewardhub/rewardhub.db", "sqlite:////var/lib/rewardhub/rewardhub.db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(("text", "shown"), [
    ("connect postgresql://a:b@h/d and redis://:c@r:6379/0 now", "connect postgresql://a:***@h/d and redis://:***@r:6379/0 now"),
    ("raw at-sign postgres://u:p@ss@host/db", "raw at-sign postgres://u:***@host/db"),
    ("https://hooks.example/x?token=1 user@example.com", "https://hooks.example/x?token=1 user@example.com"),
    ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
])
def test_mask_text_finds_every_url_password(text: str, shown: str) -> None:
    assert mask_text(text, []) == shown


@pytest.fixture
def secret_env(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("REWARDHUB_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("REWARDHUB_LLM_API_KEY", LLM_KEY)
    reset_settings_cache()
    return isolated_env


@pytest.fixture
def captured_logs() -> Iterator[Any]:
    """configure_logging's real handler, writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def configure(json_logs: bool) -> io.StringIO:
        configure_logging("test", "INFO", json_logs=json_logs)
        buffer = io.StringIO()
        root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
        return buffer

    yield configure
    root.handlers, root.level = saved
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace"):
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, SecretMaskingFilter)]


@pytest.mark.parametrize("json_logs", [True, False])
def test_log_lines_mask_url_passwords_and_secret_settings(secret_env: Path, captured_logs: Any,
                                                          json_logs: bool) -> None:
    buffer = captured_logs(json_logs)
    log = logging.getLogger("rewardhub.test")
    log.info("connecting to %s", DB_URL)
    log.warning("broker at %s, key %s, llm %s", REDIS_URL, SECRET_KEY, LLM_KEY)
    log.info("plain f-string %s", f"password={PASSWORD}")
    log.info("with extra", extra={"target": f"https://u:{PASSWORD}@hooks.example/x"})
    try:
        raise RuntimeError(f"could not reach {DB_URL}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("uvicorn.error").info("uvicorn says %s", DB_URL)
    out = buffer.getvalue()
    for secret in (PASSWORD, SECRET_KEY, LLM_KEY):
        assert secret not in out
    assert MASKED_DB in out and "redis://:***@cache.internal:6379/0" in out
    assert "RuntimeError: could not reach " + MASKED_DB in out
    if json_logs:  # extra fields show only in JSON lines
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["message"] == f"connecting to {MASKED_DB}" and lines[0]["service"] == "test"
        assert lines[3]["target"] == "https://u:***@hooks.example/x"


def test_the_filter_on_a_handler_masks_records_of_child_loggers(secret_env: Path) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(SecretMaskingFilter())
    logger = logging.getLogger("rewardhub.test.child")
    logger.addHandler(handler)
    try:
        logger.error("dsn=%s", DB_URL)
    finally:
        logger.removeHandler(handler)
    assert buffer.getvalue().strip() == f"dsn={MASKED_DB}"


# ------------------------------------------------------------------------------------------ CLI


def _assert_clean(output: str) -> None:
    assert PASSWORD not in output and SECRET_KEY not in output


def test_migrate_prints_the_masked_url(secret_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import migrate

    monkeypatch.setattr(migrate, "upgrade", lambda **_kwargs: None)
    monkeypatch.setattr(migrate, "downgrade", lambda **_kwargs: None)
    result = CliRunner().invoke(cli.app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert f"migrated {MASKED_DB} to head" in result.output
    down = CliRunner().invoke(cli.app, ["migrate", "--downgrade", "base"])
    assert f"downgraded {MASKED_DB} to base" in down.output
    _assert_clean(result.output + down.output)


def test_up_prints_the_masked_url(secret_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import rewardhub.embedded as embedded

    monkeypatch.setattr(embedded, "bootstrap", lambda _settings: embedded.Bootstrap(
        admin_key=None, admin_key_file=secret_env / "admin-key.txt", project_id="p1", newly_created=False))
    monkeypatch.setattr(embedded, "build_embedded_app", lambda: SimpleNamespace(state=SimpleNamespace(ui_path="/ui/")))
    monkeypatch.setattr(cli, "database_problem", lambda _url: None)  # db.internal does not resolve here
    monkeypatch.setattr(uvicorn, "run", lambda *_args, **_kwargs: logging.getLogger("x").info("db %s", DB_URL))
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        result = CliRunner().invoke(cli.app, ["up"])
    finally:
        root.handlers = saved
    assert result.exit_code == 0, result.output
    assert f"database: {MASKED_DB}" in result.output
    _assert_clean(result.output)


def test_serve_logs_the_masked_urls(secret_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *_args, **_kwargs: None)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(cli.app, ["serve", "gateway"])
    finally:
        root.handlers, root.level = saved
    assert result.exit_code == 0, result.output
    assert MASKED_DB in result.output and "redis://:***@cache.internal:6379/0" in result.output
    _assert_clean(result.output)


def _run_cli(args: list[str], database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDHUB_") and k not in ("DATABASE_URL",
                                                                                               "REDIS_URL")}
    env.update(DATABASE_URL=database_url, REWARDHUB_DATA_DIR=str(tmp_path / "data"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "rewardhub.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_failing_migrate_shows_no_password_in_its_traceback(tmp_path: Path) -> None:
    # Port 1 refuses at once; the traceback must not print the settings or the URL (no locals shown).
    done = _run_cli(["migrate"], f"postgresql://rewardhub:{PASSWORD}@127.0.0.1:1/rewardhub", tmp_path)
    assert done.returncode != 0
    assert "OperationalError" in done.stderr or "refused" in done.stderr.lower()
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.postgres
def test_migrate_on_postgres_with_a_password(postgres_url: str, tmp_path: Path) -> None:
    # The test server trusts local connections, so any password is accepted: it is only there to be hidden.
    with_password = postgres_url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)
    assert PASSWORD in with_password
    done = _run_cli(["migrate"], with_password, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "postgres:***@" in done.stdout + done.stderr and "to head" in done.stdout + done.stderr
    assert PASSWORD not in done.stdout + done.stderr

"""Structured JSON logs (one object per line) for every service and worker, with secrets masked.

Every handler ``configure_logging`` installs carries ``SecretMaskingFilter``: a log line never
shows a password inside a URL (``scheme://user:***@host``) nor the value of a secret setting
(``secret_key``, ``llm_api_key``, the database and Redis passwords), whoever logged it and in
whatever part of the record (message, arguments, traceback, extra fields).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from urllib.parse import quote, urlsplit

from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

request_id_var: ContextVar[str] = ContextVar("request_id", default="")

MASK = "***"
# scheme://[user]:password@ — the password may hold a raw '@' or ':' (the last '@' before the
# host wins), never whitespace or the '/', '?', '#' that end the authority.
_URL_CREDENTIALS = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)[^\s/?#]*@")
# Shorter values would mask ordinary words all over the log.
MIN_SECRET_CHARS = 6
# Loggers whose records do not reach the root handler (uvicorn and Celery install their own).
_OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace")
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# A reward token in a URL path (OpenRLHF's /get_reward/<token>): it can only score, but still a credential.
_PATH_TOKEN = re.compile(r"(?P<prefix>/get_reward/)[^\s/?#\"']+")


def mask_url_credentials(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` password and ``/get_reward/<token>`` masked."""
    return _PATH_TOKEN.sub(rf"\g<prefix>{MASK}", _URL_CREDENTIALS.sub(rf"\g<prefix>{MASK}@", text))


def mask_url(url: str) -> str:
    """A database or Redis URL fit to print: SQLAlchemy's rendering with the password hidden."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        rendered = url
    return mask_url_credentials(rendered)


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        try:
            return urlsplit(url).password
        except ValueError:
            return None


def secret_values() -> list[str]:
    """The current settings' secrets, as they could appear in text (raw and percent-encoded)."""
    from services.common.settings import get_settings

    try:
        settings = get_settings()
    except Exception:  # invalid environment: nothing to mask, and logging must not fail
        return []
    found: set[str] = set()
    for value in (settings.secret_key, settings.llm_api_key, _url_password(settings.database_url),
                  _url_password(settings.redis_url)):
        if value and len(value) >= MIN_SECRET_CHARS:
            found.update({value, quote(value, safe="")})
    return sorted(found, key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with URL passwords and the given secrets (default: the settings') masked."""
    masked = mask_url_credentials(text)
    for secret in secret_values() if secrets is None else secrets:
        masked = masked.replace(secret, MASK)
    return masked


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record in place, so every formatter and handler after it sees them masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the formatter to report
            message = None
        if message is not None:
            masked = mask_text(message, secrets)
            if masked != message:
                record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            masked = mask_text(record.exc_text, secrets)
            if masked != record.exc_text:
                # Formatters re-render exc_info when present; keep only the masked text.
                record.exc_text, record.exc_info = masked, None
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info, secrets)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, mask_text(value, secrets))
        return True


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        return True


def install_secret_masking(logger: logging.Logger) -> None:
    if not any(isinstance(f, SecretMaskingFilter) for f in logger.filters):
        logger.addFilter(SecretMaskingFilter())


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(service)s] %(name)s: %(message)s"))
    handler.addFilter(_ContextFilter(service))
    handler.addFilter(SecretMaskingFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _OWN_HANDLER_LOGGERS:
        install_secret_masking(logging.getLogger(name))
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

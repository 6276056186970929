"""Structured JSON logs (one object per line) for every service and worker, with secrets masked.

One configuration for every process (:func:`logging_config`): ``configure_logging`` applies it to
this process, ``rewardhub serve`` hands the same dict to uvicorn (``log_config``, so its error and
access loggers — in every uvicorn worker process too — go to the same JSON handler) and the Celery
worker applies it from the ``setup_logging`` signal (so Celery does not install its own handlers on
the root logger). Each line carries ``service`` and ``request_id``: the id of the HTTP request (or
of the request that submitted the Celery task) being handled, from :data:`request_id_var`.

Every handler ``configure_logging`` installs carries ``SecretMaskingFilter``: a log line never
shows a password inside a URL (``scheme://user:***@host``) nor the value of a secret setting
(``secret_key``, ``llm_api_key``, the database and Redis passwords), whoever logged it and in
whatever part of the record (message, arguments, traceback, extra fields).
"""

from __future__ import annotations

import logging
import logging.config
import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote, urlsplit

from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
# A caller's id is used only when it is short and plain (it goes into log lines and headers as is).
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

MASK = "***"
# scheme://[user]:password@ — the password may hold a raw '@' or ':' (the last '@' before the
# host wins), never whitespace or the '/', '?', '#' that end the authority.
_URL_CREDENTIALS = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)[^\s/?#]*@")
# Shorter values would mask ordinary words all over the log.
MIN_SECRET_CHARS = 6
# Loggers that may get handlers of their own (uvicorn's, Celery's): masked at the logger too.
_OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace")
# Loggers that must reach the root handler: whatever handlers their library gave them are dropped.
_PROPAGATING_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task",
                        "celery.redirected")
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(service)s] %(name)s: %(message)s"


def valid_request_id(value: str | None) -> str | None:
    """``value`` when it is a usable request id (1-64 of ``A-Za-z0-9._:-``, starting alphanumeric)."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex
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


class ContextFilter(logging.Filter):
    """Adds ``service`` and the current ``request_id`` to every record."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        return True


def install_secret_masking(logger: logging.Logger) -> None:
    if not any(isinstance(f, SecretMaskingFilter) for f in logger.filters):
        logger.addFilter(SecretMaskingFilter())


def json_formatter() -> JsonFormatter:
    return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"})


def logging_config(service: str, level: str = "INFO", json_logs: bool = True) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dict of every rewardhub process (also uvicorn's ``log_config``)."""
    formatter: dict[str, Any] = ({"()": f"{__name__}.json_formatter"} if json_logs
                                 else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"rewardhub": formatter},
        "filters": {"context": {"()": f"{__name__}.ContextFilter", "service": service},
                    "secrets": {"()": f"{__name__}.SecretMaskingFilter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "rewardhub", "filters": ["context", "secrets"]}},
        "root": {"handlers": ["stderr"], "level": level},
        # Their own handlers (uvicorn's plain text, Celery's) are replaced by the root's JSON one.
        "loggers": {
            **{name: {"handlers": [], "propagate": True} for name in _PROPAGATING_LOGGERS},
            # One line per request at INFO (LOG_LEVEL=WARNING turns them off); noisy clients stay quiet.
            "uvicorn.access": {"handlers": [], "propagate": True, "level": level},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    """Send this process's logs, one JSON object per line (or plain text), to stderr."""
    logging.config.dictConfig(logging_config(service, level, json_logs))
    # Python warnings (a library's DeprecationWarning, Celery's SecurityWarning) become log lines too.
    logging.captureWarnings(True)
    for name in _OWN_HANDLER_LOGGERS:
        install_secret_masking(logging.getLogger(name))

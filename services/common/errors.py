"""One error model for every service: each 4xx body is ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rewardhub.errors")


class ApiError(Exception):
    """An error a client can act on, rendered with its HTTP status."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code


class InvalidInput(ApiError):
    status_code = 422
    code = "invalid_input"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class UpstreamUnavailable(ApiError):
    """503 with ``Retry-After``: a service this one depends on did not answer; retrying is safe."""

    status_code = 503
    code = "upstream_unavailable"

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, field=field)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class RateLimited(ApiError):
    """429 with ``Retry-After`` (whole seconds, at least 1)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (a lone surrogate echoed from the input) escaped."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": safe_text(message),
                      "field": safe_text(field) if field is not None else None}}


def _parse_failure(exc: BaseException | None) -> tuple[int, str] | None:
    """A request body FastAPI could not parse, by cause: nested too deep, or not UTF-8 text."""
    if isinstance(exc, RecursionError):
        return 422, "body: the JSON is nested too deeply to parse"
    if isinstance(exc, UnicodeDecodeError):
        return 400, f"body: is not valid UTF-8 (byte {exc.start}: {exc.reason})"
    return None


def _loc_to_field(loc: Sequence[Any]) -> str:
    # Drop the "body"/"query"/"path" root FastAPI adds; keep list indexes readable (items[3].score).
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or str(loc[0] if loc else "body")


def _validation_message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    # Pydantic prefixes custom errors with "Value error, "; the field name already says where.
    return msg.removeprefix("Value error, ")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            loc = list(first.get("loc", ()))
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            ctx = first.get("ctx")
            reason = str(ctx.get("error", "")) if isinstance(ctx, dict) else ""
            return JSONResponse(error_body("invalid_input", f"body: is not valid JSON{at}: {reason}".rstrip(": "),
                                           "body"), status_code=422)
        field = _loc_to_field(first.get("loc", ("body",)))
        message = f"{field}: {_validation_message(first)}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        body = error_body("invalid_input", message, field)
        body["error"]["details"] = [
            {"field": safe_text(_loc_to_field(e.get("loc", ()))), "message": safe_text(_validation_message(e))}
            for e in errors[:50]
        ]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden",
                413: "payload_too_large"}.get(exc.status_code, "http_error")
        field = "body" if exc.status_code == 413 else None
        parse_failure = _parse_failure(exc.__cause__) if exc.status_code == 400 else None
        if parse_failure is not None:
            return JSONResponse(error_body("invalid_input", parse_failure[1], "body"), status_code=parse_failure[0])
        return JSONResponse(error_body(code, str(exc.detail), field), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the schema let through: the client's input, not our fault.
        log.warning("database rejected input on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse(error_body("invalid_input", f"the database cannot store a value in this request: "
                                                        f"{str(exc.orig).splitlines()[0][:200]}", None),
                            status_code=422)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Validating or walking a deeply nested input ran out of stack: the input's shape, not our fault.
        log.warning("input nested too deeply on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(error_body("invalid_input", "body: is nested too deeply to process", "body"),
                            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error", None), status_code=500)

"""The service's error taxonomy: every error response is ``{"error": {"code", "message"}}``.

Bad input never yields a 500: request validation (422), HTTP errors raised by the framework
(404 unknown route, 405, 400 unparsable body) and `ApiError`s are all rendered here; a failed disk write
(an `OSError` a route let through, or `storage_error`) is a 507 when the disk is full and a 503
otherwise, with no server path in the message; only an unexpected exception is a 500, and it is
logged with its traceback."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.runtime.errors import UserError

log = logging.getLogger("cmhash.service")

# HTTP status -> error code, for errors the framework raises itself
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "not_ready",
    507: "insufficient_storage",
}

# errno values of a full disk or an exhausted quota: 507 rather than 503
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class ApiError(Exception):
    """An error with its HTTP status, stable code and a message fit to show to the caller."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message


def bad_request(message: str) -> ApiError:
    """400: a field has a value the service does not accept."""
    return ApiError(400, message)


def too_large(message: str) -> ApiError:
    """413: an upload, body or text over the configured limit."""
    return ApiError(413, message)


def unsupported(message: str) -> ApiError:
    """415: content that is not what the endpoint reads (e.g. not an image)."""
    return ApiError(415, message)


def not_found(message: str) -> ApiError:
    """404: no such item."""
    return ApiError(404, message)


def not_ready(message: str) -> ApiError:
    """503: the model is still loading, or the gallery is not configured."""
    return ApiError(503, message)


def storage_error(exc: OSError, what: str = "the write", outcome: str = "nothing was stored") -> ApiError:
    """507 (disk full or quota exhausted) or 503 (any other I/O error) for an OSError, logged with
    its details; the message names neither the file nor the directory."""
    log.error("%s failed: %s", what, exc, exc_info=exc)
    # strerror never holds the file name (that is exc.filename): safe to show
    reason = exc.strerror or (os.strerror(exc.errno) if isinstance(exc.errno, int) else type(exc).__name__)
    if exc.errno in DISK_FULL:
        return ApiError(507, f"{what} failed: the server's storage is full ({reason}); {outcome}")
    return ApiError(
        503, f"{what} failed: the server's storage is unavailable ({reason}); {outcome}", "storage_unavailable"
    )


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, message: str, code: str | None = None, **extra: Any) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(code or STATUS_CODES.get(status, "error"), message, **extra), status_code=status)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Render every error of `app` in the taxonomy's JSON body."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return error_response(422, _validation_message(list(exc.errors())), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            error_body(STATUS_CODES.get(exc.status_code, "error"), message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        # What the client asked for cannot be done with this model or gallery (e.g. a pixels
        # query to a features model): a 400 with the message. Anything else is a 500 below.
        return error_response(400, str(exc))

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        error = storage_error(exc, f"{request.method} {request.url.path}", "try again later")
        return error_response(error.status, error.message, error.code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")

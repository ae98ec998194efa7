"""The service's error taxonomy: every error response is ``{"error": {"code", "message"}}``.

Bad input never yields a 500: request validation (422), HTTP errors raised by the framework
(404 unknown route, 405, 400 unparsable body) and `ApiError`s are all rendered here; only an
unexpected exception is a 500, and it is logged with its traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
}


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
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                   for e in exc.errors()]
        return error_response(422, _validation_message(list(exc.errors())), details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(error_body(STATUS_CODES.get(exc.status_code, "error"), message),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")

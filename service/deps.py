"""Dependencies shared by the routers: the app state, API-key checks, query limits."""

from __future__ import annotations

import secrets

from fastapi import Request

from service.errors import ApiError, bad_request, too_large
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The ServiceState of the app serving `request`."""
    return request.app.state.cmhash


def _check_key(request: Request, state: ServiceState) -> None:
    expected = state.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise ApiError(401, "an API key is required: send X-API-Key or Authorization: Bearer")
    if not secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise ApiError(403, "the API key is not valid")


def require_write(request: Request) -> None:
    """Writes need the API key whenever one is configured."""
    _check_key(request, get_state(request))


def require_read(request: Request) -> None:
    """Reads need the API key when one is configured and protect_reads is set."""
    state = get_state(request)
    if state.settings.protect_reads:
        _check_key(request, state)


def check_text(text: str, max_chars: int, field: str = "text") -> str:
    """`text` if non-blank and within the limit (400 / 413 otherwise)."""
    if not text.strip():
        raise bad_request(f"{field} must not be empty or whitespace")
    if len(text) > max_chars:
        raise too_large(f"{field} has {len(text)} characters, more than the {max_chars}-character limit")
    return text


def check_page(state: ServiceState, k: int, offset: int, radius: int | None) -> None:
    """400 unless 1 <= k <= max_k, 0 <= offset <= max_offset and 0 <= radius <= bits."""
    s = state.settings
    if not 1 <= k <= s.max_k:
        raise bad_request(f"k must be between 1 and {s.max_k}, got {k}")
    if not 0 <= offset <= s.max_offset:
        raise bad_request(f"offset must be between 0 and {s.max_offset}, got {offset}")
    bits = state.require_encoder().bits
    if radius is not None and not 0 <= radius <= bits:
        raise bad_request(f"radius must be between 0 and {bits} (the code length), got {radius}")

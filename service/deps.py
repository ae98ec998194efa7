"""Dependencies shared by the routers: the app state, API-key checks, query limits."""

from __future__ import annotations

import ipaddress
import secrets

from fastapi import Request

from service.errors import ApiError, bad_request, too_large
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The ServiceState of the app serving `request`."""
    state: ServiceState = request.app.state.cmhash
    return state


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


def is_local_client(host: str | None, allowed: list[str]) -> bool:
    """Whether client address `host` is one of `allowed` (addresses, networks, or exact names)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    except ValueError:
        address = None
    for entry in allowed:
        if entry == host:
            return True
        try:
            if address is not None and address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def require_write(request: Request) -> None:
    """Writes need the API key whenever one is configured; without one, they are accepted only
    from `anonymous_write_clients` (loopback by default), never from the network."""
    state = get_state(request)
    if state.settings.api_key is None:
        client = request.client.host if request.client else None
        if not is_local_client(client, state.settings.anonymous_write_clients):
            raise ApiError(
                403,
                "writes without an API key are accepted only from this machine; "
                "set CMHASH_API_KEY on the server and send it as X-API-Key to write remotely",
            )
        return
    _check_key(request, state)


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

"""ASGI middleware that vets requests before a route sees them: a size limit and a time limit on
bodies, text that must be text in multipart forms, the Host allow-list (DNS rebinding), the
Origin check on writes (CSRF), and the security headers of every response. All answer with the
service's error body."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.forms import non_text_part


async def read_messages(receive: Receive, limit: int | None = None) -> list[Message] | None:
    """Every message of a request body, or None as soon as the body passes `limit` bytes."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if limit is not None and size > limit:
            return None
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def replay(messages: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A `receive` that hands out `messages` first, then whatever `receive` brings (a disconnect)."""

    async def next_message() -> Message:
        return messages.pop(0) if messages else await receive()

    return next_message


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413: at once from Content-Length; a body
    without one (chunked) is read up to the limit first and then handed on."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = error_response(413, f"request body larger than the {self.limit}-byte limit")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
            elif int(length) > self.limit:
                await too_big(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        messages = await read_messages(receive, self.limit)
        if messages is None:
            await too_big(scope, receive, send)
        else:
            await self.app(scope, replay(messages, receive), send)


class StrictFormText:
    """Refuse with 400 a multipart body whose field names, file names or text fields are not
    valid text (`service.forms.non_text_part`). It reads the whole body into memory, so it
    belongs inside `BodyLimit`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope["headers"]).get(b"content-type", b"") if scope["type"] == "http" else b""
        if not content_type.lower().startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        messages = await read_messages(receive)
        assert messages is not None  # no limit given
        problem = non_text_part(b"".join(m.get("body", b"") for m in messages), content_type)
        if problem is not None:
            await error_response(400, problem)(scope, receive, send)
        else:
            await self.app(scope, replay(messages, receive), send)


# ----------------------------------------------------------------------------- browser safety

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """("name", port or None) of a Host header value (IPv6 kept in brackets, lower case, no
    trailing dot), or None when it is not a host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
    if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
        return None
    name = name.rstrip(".")
    if not name or any(c in name for c in "/\\@ \t"):
        return None
    return name, int(rest[1:]) if rest else None


def host_matches(name: str, patterns: list[str]) -> bool:
    """Whether host `name` is one of `patterns` ("*": any; "*.example.org": a subdomain of it)."""
    for pattern in patterns:
        if pattern == "*" or pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def allowed_host_names(configured: list[str], bound: str) -> list[str]:
    """The Host names a server bound to `bound` answers: the `configured` names (a port in one
    is ignored) plus the bound address (bracketed if IPv6) unless it is every interface."""
    out = []
    for entry in configured:
        if entry == "*" or entry.startswith("*."):
            out.append(entry.lower())
        elif (parsed := split_host(entry)) is not None:
            out.append(parsed[0])
    if bound not in ("", "0.0.0.0", "::"):
        out.append(f"[{bound.strip('[]').lower()}]" if ":" in bound else bound.lower())
    return out


def header(scope: Scope, name: bytes) -> str | None:
    """The first `name` header of `scope` as text (latin-1), or None."""
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class HostCheck:
    """Answer 400 to a request whose Host header is not one of `allowed` (DNS rebinding: a page
    of an attacker's domain resolved to 127.0.0.1 sends its own name as Host)."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
            value = header(scope, b"host")
            parsed = split_host(value) if value is not None else None
            if parsed is None or not host_matches(parsed[0], self.allowed):
                shown = (value or "")[:100].encode("ascii", "backslashreplace").decode("ascii")
                message = (
                    f"Host {shown!r} is not served here; add it to CMHASH_ALLOWED_HOSTS"
                    if value
                    else "a Host header is required"
                )
                if scope["type"] == "http":
                    await error_response(400, message)(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin or Referer value, or None ("null", not a URL)."""
    try:
        parts = urlsplit(url.strip())
        scheme, name, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if not scheme or not name:
        return None
    name = f"[{name}]" if ":" in name else name.rstrip(".")
    return scheme, name, port if port is not None else DEFAULT_PORTS.get(scheme, -1)


class OriginCheck:
    """Answer 403 to a POST / PUT / PATCH / DELETE sent by a page of another origin (CSRF): its
    Origin header (or, without one, its Referer) must be the server's own (same host and port as
    the Host header) or one of `allowed` ("*": any). Requests with neither header (curl, scripts)
    pass: browsers send Origin on every such cross-site request."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {o for o in (origin_of(a) for a in allowed if a != "*") if o is not None}

    def same_origin(self, scope: Scope, source: tuple[str, str, int]) -> bool:
        host = split_host(header(scope, b"host") or "")
        if host is None:
            return False
        name, port = host
        # without a port in Host, the source's scheme decides (TLS may end at a proxy)
        return name == source[1] and (port if port is not None else DEFAULT_PORTS.get(source[0], -1)) == source[2]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS and not self.any:
            value = header(scope, b"origin")
            field = "Origin"
            if value is None:
                value, field = header(scope, b"referer"), "Referer"
            if value is not None:
                source = origin_of(value)
                if source is None or not (source in self.allowed or self.same_origin(scope, source)):
                    shown = value[:100].encode("ascii", "backslashreplace").decode("ascii")
                    message = (
                        f"cross-origin {scope['method']} refused ({field} {shown!r}); "
                        "add the origin to CMHASH_ALLOWED_ORIGINS to allow its pages"
                    )
                    await error_response(403, message)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Add `X-Content-Type-Options: nosniff` to every response, and `extra` headers to the
    responses of the paths in `extra` (the search page's Content-Security-Policy)."""

    def __init__(self, app: ASGIApp, extra: dict[str, list[tuple[bytes, bytes]]] | None = None) -> None:
        self.app = app
        self.extra = extra or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = [(b"x-content-type-options", b"nosniff"), *self.extra.get(scope["path"], [])]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [*message.get("headers", []), *((k, v) for k, v in added if k not in names)],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------- slow clients


class BodyTimeout:
    """Answer 408 (and close the connection) when a request body is not received in full within
    `timeout` seconds of the request reaching the app. The app sees a disconnect instead of the
    rest of the body; whatever it answers then is replaced by the 408."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        complete = timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal complete, timed_out
            if complete or timed_out:
                return await receive()  # after the body: only a disconnect comes
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out and not started:
                return  # the 408 below replaces the app's answer
            started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out or started:
                raise  # a failure of the app's own; a read cut short by the timeout is answered below
        if timed_out and not started:
            response = error_response(
                408, f"the request body was not received within {self.timeout:g} s", "request_timeout"
            )
            response.headers["connection"] = "close"
            await response(scope, receive, send)


_HEAD_TOO_LARGE_BODY = (
    b'{"error": {"code": "header_too_large", "message": "the request head is over the max_header_bytes limit"}}'
)
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_TOO_LARGE_BODY), _HEAD_TOO_LARGE_BODY)
)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11 protocol, without a head timeout
    HeadTimeoutProtocol: type[asyncio.Protocol] | None = None
else:

    class HeadTimeoutProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with a timeout on the request head (`cmhash serve` uses it).

        uvicorn closes idle keep-alive connections but bounds neither the time to the first byte
        nor a head sent a header line at a time (slowloris): such clients hold their connections
        forever. This closes a connection whose request head is not complete `header_timeout`
        seconds after the connection opened (first request) or after the request's first byte
        (later ones; the idle time between requests is the keep-alive timeout's)."""

        header_timeout: float | None = None  # None: CMHASH_HEADER_TIMEOUT_S, else the setting's default
        max_head_bytes: int | None = None  # None: CMHASH_MAX_HEADER_BYTES, else 64 KiB (httptools has no such limit)

        def _arm(self) -> None:
            if getattr(self, "_head_timer", None) is None:
                timeout = self.header_timeout or float(os.environ.get("CMHASH_HEADER_TIMEOUT_S") or 10.0)
                self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(timeout, self._head_timed_out)

        def _disarm(self) -> None:
            self._head_bytes = 0
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()  # type: ignore[union-attr]
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            """Count the bytes of a request head still in progress: past the limit, answer 431
            and close (uvicorn applies its head limit to h11 only; httptools buffers any size).
            Counted after parsing, so a chunk that completes the head (and carries the start of
            the body) never counts: only bytes read while the head is still incomplete do."""
            super().data_received(data)
            if getattr(self, "_head_timer", None) is None or self.transport.is_closing():
                return  # no head in progress: it completed in this chunk, or the connection is going
            self._head_bytes = getattr(self, "_head_bytes", 0) + len(data)
            if self._head_bytes > self._head_limit():
                self._disarm()
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _head_limit(self) -> int:
            return self.max_head_bytes or int(os.environ.get("CMHASH_MAX_HEADER_BYTES") or 64 * 1024)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._head_size = getattr(self, "_head_size", 0) + len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size = getattr(self, "_head_size", 0) + len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            """A head that arrived whole (one read) is measured here, before the app sees it: past
            the limit the parser is stopped and `send_400_response` answers 431 instead."""
            self._disarm()
            if getattr(self, "_head_size", 0) > self._head_limit():
                self._head_too_large = True
                raise ValueError("request head over max_header_bytes")  # httptools: HttpParserCallbackError
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if getattr(self, "_head_too_large", False):
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
                return
            super().send_400_response(msg)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

"""ASGI middleware that vets request bodies before a route reads them: a size limit, and text
that must be text in multipart forms. Both answer with the service's error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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

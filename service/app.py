"""The FastAPI application: `create_app(settings)` (also a uvicorn factory: `service.app:create_app`).

The model and galleries load in a background thread after startup, so /healthz answers at
once and /readyz turns 200 when loading is done (503 before, or with the error if it failed).
On shutdown queued searches finish and each gallery's journal is folded into a snapshot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response, install_handlers
from service.metrics import Metrics
from service.routers import encode, gallery, health, search
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("cmhash.service")


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
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await too_big(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app for `settings` (default: read from CMHASH_* environment variables)."""
    settings = settings or Settings()  # type: ignore[call-arg]
    metrics = Metrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await asyncio.to_thread(state.load)
                log.info("cmhash service ready")
            except Exception as exc:  # any load failure is reported by /readyz
                state.error = f"{type(exc).__name__}: {exc}"
                log.exception("loading the model or galleries failed")

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            await loader  # a load in progress (a thread) cannot be cancelled: let it finish
            for batcher in state.batchers.values():
                await batcher.drain()
            await asyncio.to_thread(state.close)

    app = FastAPI(title="cmhash", version="0.1.0", lifespan=lifespan,
                  description="Cross-modal hashing retrieval: text finds images and images find text "
                              "through binary codes and exact Hamming search.")
    app.state.cmhash = state
    install_handlers(app)
    for router in (search.router, encode.router, gallery.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)  # inside `observe`: its 413s are counted

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        status = 500  # unless a response comes back (an unhandled error re-raises past here)
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_label(request)
            metrics.requests.labels(route, request.method, str(status)).inc()
            metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)

    static = settings.static_dir
    if static is not None and (static / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=static), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(static / "index.html")

    return app

"""The FastAPI application: `create_app(settings)` (also a uvicorn factory: `service.app:create_app`).

The model and galleries load in a background thread after startup, so /healthz answers at
once and /readyz turns 200 when loading is done (503 before, or with the error if it failed).
On shutdown queued searches finish and each gallery's journal is folded into a snapshot."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.errors import install_handlers
from service.metrics import Metrics, RequestMetrics
from service.middleware import (
    BodyLimit,
    BodyTimeout,
    HostCheck,
    OriginCheck,
    SecurityHeaders,
    StrictFormText,
    allowed_host_names,
)
from service.queries import hide_paths
from service.routers import encode, gallery, health, search
from service.schemas import ErrorResponse
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("cmhash.service")

# The search page loads only its own script, style sheet and images (a dropped query image is
# previewed from a blob: URL) and talks only to this server.
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"referrer-policy", b"same-origin"),
]

# /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package's copies (served at
# DOCS_ASSETS), never from a CDN: the docs work offline and send nothing to a third party.
DOCS_ASSETS = "/static-docs"
# Every route's error answers, in the OpenAPI document (replaces FastAPI's HTTPValidationError 422).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "the request was refused (the body names the reason)"},
    "5XX": {
        "model": ErrorResponse,
        "description": "the server could not answer: 503 while the model loads or "
        "storage fails (a refused write stored nothing), 507 disk full",
    },
}


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc over the app's OpenAPI document, with local assets only."""
    files = importlib.resources.files("fastapi_offline") / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files)), name="static-docs")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a path prefix
        assets = root + DOCS_ASSETS
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )  # no badge fetched from validator.swagger.io

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service app for `settings` (default: read from CMHASH_* environment variables)."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await asyncio.to_thread(state.load)
                log.info("cmhash service ready")
            except Exception as exc:  # any load failure is reported by /readyz
                state.error = hide_paths(f"{type(exc).__name__}: {exc}")  # shown to callers: no server paths
                log.exception("loading the model or galleries failed")

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            await loader  # a load in progress (a thread) cannot be cancelled: let it finish
            for batcher in state.batchers.values():
                await batcher.drain()
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="cmhash",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
        description="Cross-modal hashing retrieval: text finds images and images find text "
        "through binary codes and exact Hamming search.",
    )
    app.state.cmhash = state
    install_handlers(app)
    install_docs(app)
    for router in (search.router, encode.router, gallery.router, health.router):
        app.include_router(router)
    app.add_middleware(StrictFormText)  # inside the body limit, which bounds what it reads
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)  # inside RequestMetrics: its 413s are counted
    app.add_middleware(BodyTimeout, timeout=settings.body_timeout_s)  # outside the body limit: bounds its reads too
    app.add_middleware(OriginCheck, allowed=settings.allowed_origins)  # CSRF: before any body is read
    app.add_middleware(HostCheck, allowed=allowed_host_names(settings.allowed_hosts, settings.host))  # DNS rebinding
    app.add_middleware(SecurityHeaders, extra={"/": PAGE_HEADERS})  # on every answer above, errors included
    app.add_middleware(RequestMetrics, metrics=metrics)

    static = settings.static_dir
    if static is not None and (static / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=static), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(static / "index.html")

    return app

"""Prometheus metrics of one app, in its own CollectorRegistry (several apps per process, as
in tests, do not collide)."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request counts and latencies per route, encode and search time, batch and gallery sizes,
    failed gallery compactions."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cmhash_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cmhash_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encode = Histogram(
            "cmhash_encode_seconds",
            "Encoder time per call (a whole batch), by modality",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search = Histogram(
            "cmhash_search_seconds",
            "Code store search time per call (a whole batch), by gallery",
            ["gallery"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "cmhash_batch_queries",
            "Queries per micro-batch, by modality",
            ["modality"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.gallery_items = Gauge("cmhash_gallery_items", "Items per gallery", ["gallery"], registry=r)
        self.encoder_device = Gauge(
            "cmhash_encoder_device",
            "1 for the device the encoder's sessions run on (cuda only when the CUDA provider really loaded)",
            ["device"],
            registry=r,
        )
        # issue 10 (corruption): degraded galleries, snapshot fallbacks, startup sweep
        self.gallery_degraded = Gauge(
            "cmhash_gallery_degraded",
            "1 when a configured gallery could not be opened (requests to it answer 503), by gallery",
            ["gallery"],
            registry=r,
        )
        self.gallery_fallbacks = Counter(
            "cmhash_gallery_fallbacks",
            "Galleries opened from an older snapshot or past a bad CURRENT pointer, by gallery",
            ["gallery"],
            registry=r,
        )
        self.swept_files = Counter(
            "cmhash_swept_files",
            "Leftover files removed by the startup sweep, by kind (upload, gallery)",
            ["kind"],
            registry=r,
        )
        self.compaction_failures = Counter(
            "cmhash_gallery_compaction_failures",
            "Failed journal compactions (the write was kept; retried later), by gallery",
            ["gallery"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by route template, method and
    status (500 when the app raised instead of answering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # set by the router that matched
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route, scope["method"]).observe(time.perf_counter() - started)

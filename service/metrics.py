"""Prometheus metrics of one app, in its own CollectorRegistry (several apps per process, as
in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request counts and latencies per route, encode and search time, batch and gallery sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cmhash_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("cmhash_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.encode = Histogram("cmhash_encode_seconds", "Encoder time per call (a whole batch), by modality",
                                ["modality"], buckets=LATENCY_BUCKETS, registry=r)
        self.search = Histogram("cmhash_search_seconds", "Code store search time per call (a whole batch), by gallery",
                                ["gallery"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("cmhash_batch_queries", "Queries per micro-batch, by modality", ["modality"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.gallery_items = Gauge("cmhash_gallery_items", "Items per gallery", ["gallery"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

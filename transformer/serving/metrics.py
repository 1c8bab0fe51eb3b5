"""The service's Prometheus metrics, in a registry of its own (no global state), and the middleware that counts
requests.

Names (stable; the load benchmark and dashboards read them):

- ``transformer_serve_requests_total{route, status}``: answered requests by route and HTTP status;
- ``transformer_serve_request_seconds{route}``: request latency, a histogram;
- ``transformer_serve_requests_in_progress``: requests received and not yet answered (this one included);
- ``transformer_serve_batch_sentences``, ``transformer_serve_batch_tokens``: sentences and source tokens per
  decoded batch, histograms; ``transformer_serve_batch_seconds``: decoding time per batch;
- ``transformer_serve_queue_sentences``: sentences waiting for a batch, a gauge;
- ``transformer_serve_ready``: 1 once the model is loaded, else 0.

``route`` is one of the service's paths, ``/static`` for its files, or ``other`` (so a scan of random URLs
cannot grow the label set).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    """The instruments, registered in ``registry``; ``text()`` is the /metrics page."""

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry()
        prefix = "transformer_serve"
        self.requests = Counter(
            f"{prefix}_requests", "Answered HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            f"{prefix}_request_seconds", "Request latency in seconds", ["route"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_sentences = Histogram(
            f"{prefix}_batch_sentences", "Sentences per decoded batch", buckets=SIZE_BUCKETS, registry=self.registry
        )
        self.batch_tokens = Histogram(
            f"{prefix}_batch_tokens", "Source tokens per decoded batch", buckets=TOKEN_BUCKETS, registry=self.registry
        )
        self.batch_seconds = Histogram(
            f"{prefix}_batch_seconds", "Decoding time per batch in seconds", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            f"{prefix}_requests_in_progress", "Requests received and not yet answered", registry=self.registry
        )
        self.queue = Gauge(f"{prefix}_queue_sentences", "Sentences waiting for a batch", registry=self.registry)
        self.ready = Gauge(f"{prefix}_ready", "1 once the model is loaded", registry=self.registry)

    def observe_batch(self, sentences: int, tokens: int, seconds: float) -> None:
        self.batch_sentences.observe(sentences)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)

    def route(self, path: str) -> str:
        if path in self.routes:
            return path
        return "/static" if path.startswith("/static/") else "other"

    def text(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of the registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request by route and status, and times it (an ASGI middleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an exception before any answer counts as a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_progress.dec()
            route = self.metrics.route(scope["path"])
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

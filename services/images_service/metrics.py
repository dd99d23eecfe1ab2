"""Prometheus metrics of the images-service API process."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JOBS_ENQUEUED = Counter("images_jobs_enqueued_total", "Generation jobs accepted into the queue.", ["engine"])
HTTP_SECONDS = Histogram(
    "images_http_request_seconds",
    "Images-service HTTP latency by route template.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUEUE_DEPTH = Gauge(
    "images_queue_depth", "Jobs waiting in each engine's queue (read at scrape time).", ["engine"]
)


class HttpMetricsMiddleware:
    """Observes HTTP_SECONDS for every request, labelled by route template (``unmatched`` when no
    route took it). Plain ASGI: Starlette's ``@app.middleware("http")`` runs each request in a task
    group with its own streams, which cost more than the generate route itself under load."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = "500"  # what the client gets when the app raises before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_SECONDS.labels(method=scope["method"], route=route, status=status).observe(
                time.perf_counter() - started
            )

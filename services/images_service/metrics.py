"""Prometheus metrics of the images-service API process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

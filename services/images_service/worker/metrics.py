"""The worker's Prometheus metrics: model loads and finished jobs, served on its /metrics port.

Defined once here (the default registry rejects a second definition) and imported by the engine
and the job runner.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LOAD_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Model loads span a tiny pipeline from local disk (~0.1 s) to Flux from a cold disk (minutes)."""

JOB_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Renders span a tiny model at 64x64 (under a second) to SDXL + refiner on a CPU (minutes)."""

MODEL_LOADS = Counter("images_model_loads_total", "Pipelines loaded into memory, by model.", ["model"])
MODEL_LOAD_SECONDS = Histogram(
    "images_model_load_seconds",
    "Seconds spent loading a pipeline, by model.",
    ["model"],
    buckets=LOAD_SECONDS_BUCKETS,
)
JOBS_FINISHED = Counter(
    "images_jobs_finished_total",
    "Jobs that reached a terminal status, by engine and status.",
    ["engine", "status"],
)
JOB_RUN_SECONDS = Histogram(
    "images_job_run_seconds",
    "Seconds a job spent running on a worker, by engine.",
    ["engine"],
    buckets=JOB_SECONDS_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "images_job_queue_wait_seconds",
    "Seconds a job waited in the queue before a worker started it, by engine.",
    ["engine"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
)
BYTES_STORED = Counter(
    "images_bytes_stored_total",
    "Bytes written to storage by jobs, by kind (png, sidecar, thumbnail, video).",
    ["kind"],
)

"""Prometheus metrics of the gateway: proxied requests by route template, and upstream failures by kind."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PROXY_REQUESTS = Counter(
    "kitty_gateway_proxied_requests_total",
    "Requests proxied to the images-service, by route template, method and status.",
    ["route", "method", "status"],
)
PROXY_SECONDS = Histogram(
    "kitty_gateway_proxy_seconds",
    "Time until the images-service's response headers arrived (bodies stream afterwards).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30),
)
UPSTREAM_ERRORS = Counter(
    "kitty_gateway_upstream_errors_total",
    "Failures talking to the images-service, by kind (connect, timeout, protocol, stream).",
    ["kind"],
)

_JOB_ACTIONS = frozenset({"events", "cancel", "preview"})
_ROOT_ROUTES = frozenset({"generate", "rerun", "upscale", "latest", "select", "presets"})
OTHER_ROUTE = "/api/images/{path}"
"""The one bucket for paths the gateway does not know, so label cardinality stays bounded."""


def route_template(path: str) -> str:
    """Map a proxied path (below ``/api/images/``) onto the images-service's route template."""
    parts = path.strip("/").split("/")
    if len(parts) == 1 and parts[0] in _ROOT_ROUTES:
        return f"/api/images/{parts[0]}"
    if parts[0] == "jobs" and len(parts) == 2 and parts[1]:
        return "/api/images/jobs/{job_id}"
    if parts[0] == "jobs" and len(parts) == 3 and parts[2] in _JOB_ACTIONS:
        return f"/api/images/jobs/{{job_id}}/{parts[2]}"
    if parts[0] == "files" and len(parts) > 1:
        return "/api/images/files/{key}"
    return OTHER_ROUTE

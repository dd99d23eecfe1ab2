"""Liveness, readiness (Redis and storage reachable) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..engines import ENGINES
from ..errors import KittyError
from ..metrics import QUEUE_DEPTH
from .deps import QueueDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(queue: QueueDep, store: StoreDep) -> JSONResponse:
    checks: dict[str, dict[str, str]] = {}
    for name, check in (("redis", queue.ping), ("storage", store.check)):
        try:
            check()
            checks[name] = {"status": "ok"}
        except KittyError as exc:
            checks[name] = {"status": "error", "code": exc.code.value, "message": exc.message}
    ready = all(c["status"] == "ok" for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics")
def metrics(queue: QueueDep) -> Response:
    for engine in ENGINES:
        try:
            QUEUE_DEPTH.labels(engine=engine).set(queue.depth(engine))
        except KittyError:  # Redis down: /readyz says so; the scrape still answers
            break
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

"""`GET /api/images/engines`: the health-check matrix of every engine this build can run.

Server engines are asked directly (one short HTTP call each, in parallel); a local engine (diffusers)
lives only in workers (the API never imports torch), so its row comes from the model registry and
the workers registered on its queue. Any engine without a live worker is `offline`: its jobs wait.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from services.contracts import EngineRow, EnginesView

from ..engines import ENGINES, Engine, EngineHealth, make_engine
from ..engines.descriptors import worker_command
from ..models import ModelRegistry
from ..queue import JobQueue, redis_errors
from ..settings import Settings
from ..worker.card import WorkerCard, read_cards
from ..worker.rq_worker import live_workers
from .deps import QueueDep, RegistryDep, SettingsDep

router = APIRouter(prefix="/api/images", tags=["engines"])

HEALTH_CACHE_S = 5.0
"""A matrix this fresh is served again, so a busy gallery does not hammer the engines."""


class EngineProbe:
    """Server-engine adapters (httpx only) made once per app, and the last matrix."""

    def __init__(self) -> None:
        self._adapters: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._cached: tuple[float, EnginesView] | None = None
        self._health: dict[str, tuple[float, EngineHealth]] = {}

    def adapter(self, name: str, settings: Settings, registry: ModelRegistry) -> Engine:
        with self._lock:
            if name not in self._adapters:
                self._adapters[name] = make_engine(name, settings, registry)
            return self._adapters[name]

    def health(self, name: str, settings: Settings, registry: ModelRegistry) -> EngineHealth:
        if ENGINES[name].is_local:
            if not registry.names():
                return EngineHealth(
                    "misconfigured",
                    f"no models registered in {registry.path}: run `kitty-images models tiny`",
                )
            return EngineHealth("ready", f"{len(registry.names())} models registered")
        try:
            return self.adapter(name, settings, registry).health()
        except Exception as exc:  # an adapter that cannot even be built is misconfigured, not a 500
            return EngineHealth("misconfigured", f"{type(exc).__name__}: {exc}")

    def cached_health(self, name: str, settings: Settings, registry: ModelRegistry) -> EngineHealth:
        """`health`, reused for HEALTH_CACHE_S: submits ask it when an engine has no live worker."""
        now = time.monotonic()
        cached = self._health.get(name)
        if cached and now - cached[0] < HEALTH_CACHE_S:
            return cached[1]
        result = self.health(name, settings, registry)
        self._health[name] = (now, result)
        return result

    def matrix(self, settings: Settings, registry: ModelRegistry, queue: JobQueue) -> EnginesView:
        cached = self._cached
        if cached and time.monotonic() - cached[0] < HEALTH_CACHE_S:
            return cached[1]
        with ThreadPoolExecutor(max_workers=len(ENGINES)) as pool:
            health = dict(
                zip(ENGINES, pool.map(lambda n: self.health(n, settings, registry), ENGINES), strict=True)
            )
        checked = datetime.now(UTC).isoformat()
        rows = []
        for name, result in health.items():
            with redis_errors():
                live = live_workers(queue.redis, queue.queues(name))
                cards = read_cards(queue.redis, settings.queue_prefix, [worker.name for worker in live])
            rows.append(row_of(name, result, len(live), cards, checked, settings.image_engine))
        view = EnginesView(engines=rows)
        self._cached = (time.monotonic(), view)
        return view


def row_of(
    name: str, own: EngineHealth, workers: int, cards: list[WorkerCard], checked: str, image_engine: str
) -> EngineRow:
    """An engine's row: what its live workers report of their servers when they have said (each may
    use another server than the API's settings name), else the API's own look."""
    if cards:
        ready = [card for card in cards if card.status == "ready"]
        seen = sorted({f"{card.server or card.host}: {card.detail}" for card in cards})
        plural = "s" if workers != 1 else ""
        health = EngineHealth(
            "ready" if ready else cards[0].status,
            f"{workers} worker{plural}; " + "; ".join(seen),
            (ready or cards)[0].version,
        )
    elif workers == 0 and own.status == "ready":
        hint = f"no worker serves this engine: run `{worker_command(name, image_engine)}`"
        health = EngineHealth("offline", f"{own.detail}; {hint}", own.version)
    else:
        health = own
    return EngineRow(
        engine_id=name,
        status=health.status,
        detail=health.detail,
        version=health.version,
        last_check=checked,
        workers=workers,
    )


def get_probe(request: Request) -> EngineProbe:
    return request.app.state.engine_probe  # type: ignore[no-any-return]


@router.get("/engines", response_model=EnginesView)
def engines(request: Request, settings: SettingsDep, registry: RegistryDep, queue: QueueDep) -> EnginesView:
    return get_probe(request).matrix(settings, registry, queue)

"""What a worker tells the API about itself: its engine, where that engine's server is, and how the
server answers *the worker* — so the engines matrix reports what the workers use, not the API's own
settings (a ComfyUI worker pointed at another host used to show as "offline" while it rendered).

Each worker rewrites its card every `CARD_INTERVAL_S` under ``{prefix}:worker-card:{name}`` with a
TTL, so a killed worker's card vanishes as its heartbeat goes stale.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import RedisError

from ..dispatch import advertise
from ..engines import ENGINES, Engine
from ..engines.base import EngineHealth, HealthStatus
from ..settings import Settings
from ..storage import Store
from ..storage.claim import StoreShared, claim_store
from .rq_worker import WORKER_TTL_S

log = logging.getLogger("kitty.images.worker")

CARD_KEY = "{prefix}:worker-card:{name}"

CARD_INTERVAL_S = 10.0
"""How often a worker asks its engine's health and rewrites its card (one short HTTP call for a
server engine)."""


@dataclass(frozen=True)
class WorkerCard:
    name: str
    engine: str
    server: str | None
    """Where its engine's server is, as the worker's settings say (None for the local engine)."""
    status: HealthStatus
    detail: str
    version: str | None
    host: str
    pid: int
    updated_at: str
    models: list[str] = field(default_factory=list)
    """The models its engine holds loaded, least recently used first (dispatch.py routes by them)."""
    device: str | None = None
    free_memory_bytes: int | None = None
    """What its device has free: the GPU's for CUDA, else the machine's available memory."""


def server_location(engine: str, settings: Settings) -> str | None:
    fields = ENGINES[engine].server_settings
    return ":".join(str(getattr(settings, field)) for field in fields) if fields else None


def make_card(name: str, engine_name: str, engine: Engine, settings: Settings) -> WorkerCard:
    try:
        health = engine.health()
    except Exception as exc:  # a health probe that raises is a misconfiguration to show, not a crash
        health = EngineHealth("misconfigured", f"{type(exc).__name__}: {exc}")
    return WorkerCard(
        name=name,
        engine=engine_name,
        server=server_location(engine_name, settings),
        status=health.status,
        detail=health.detail,
        version=health.version,
        host=socket.gethostname(),
        pid=os.getpid(),
        updated_at=datetime.now(UTC).isoformat(),
        models=resident_models(engine),
        device=device_of(engine),
        free_memory_bytes=free_memory(engine),
    )


def resident_models(engine: Engine) -> list[str]:
    """The models `engine` holds loaded (an engine that says nothing holds none we know of)."""
    resident = getattr(engine, "resident_models", None)
    return list(resident()) if callable(resident) else []


def device_of(engine: Engine) -> str | None:
    device = getattr(engine, "device", None)
    return str(device) if device is not None else None


def free_memory(engine: Engine) -> int | None:
    """Free bytes on the engine's CUDA device, else the machine's available memory (Linux, macOS)."""
    device = device_of(engine) or ""
    torch = sys.modules.get("torch")  # only if the engine imported it: a server worker never does
    if device.startswith("cuda") and torch is not None:
        try:
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        except Exception:  # a device that cannot say: nothing to report
            return None
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def publish(redis: Redis, prefix: str, card: WorkerCard) -> None:
    key = CARD_KEY.format(prefix=prefix, name=card.name)
    redis.set(key, json.dumps(asdict(card)), ex=int(WORKER_TTL_S))


def read_cards(redis: Redis, prefix: str, names: list[str]) -> list[WorkerCard]:
    """The cards of the workers named (the live ones), skipping any that has none yet."""
    if not names:
        return []
    raw = redis.mget([CARD_KEY.format(prefix=prefix, name=name) for name in names])
    cards = []
    for value in raw:
        if value:
            try:
                cards.append(WorkerCard(**json.loads(value)))
            except (TypeError, ValueError):
                continue  # a card of another version: ignored, not a 500
    return cards


class CardPublisher(threading.Thread):
    """Rewrites the worker's card now and every `CARD_INTERVAL_S` until stopped."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        worker_name: str,
        engine_name: str,
        engine: Engine,
        store: Store | None = None,
    ) -> None:
        super().__init__(name="worker-card", daemon=True)
        self.redis, self.settings, self.store = redis, settings, store
        self.worker_name, self.engine_name, self.engine = worker_name, engine_name, engine
        self.stopped = threading.Event()

    def publish_once(self) -> None:
        card = make_card(self.worker_name, self.engine_name, self.engine, self.settings)
        try:
            publish(self.redis, self.settings.queue_prefix, card)
            advertise(self.redis, self.settings, self.engine_name, card.models)
            if self.store is not None:
                claim_store(self.redis, self.settings, self.store)  # renewed while the worker runs
        except RedisError as exc:  # Redis away: the next round tries again
            log.debug("worker card not published", extra={"error": str(exc)})
        except StoreShared as exc:  # another folder claimed it while this worker's claim had lapsed
            log.error("filesystem store shared", extra={"error": str(exc)})

    def run(self) -> None:
        while True:
            self.publish_once()
            if self.stopped.wait(CARD_INTERVAL_S):
                return

    def stop(self) -> None:
        self.stopped.set()

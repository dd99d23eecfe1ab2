"""A worker registered in Redis exactly as `images-worker --engine ENGINE` registers itself, that never
takes a job: the service then sees a live worker for the engine (and accepts its jobs even with its
server down), and those jobs stay queued."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta

from rq.serializers import JSONSerializer
from rq.utils import utcformat

from services.images_service.queue import connect_redis, engine_queues
from services.images_service.settings import Settings
from services.images_service.worker.rq_worker import IDLE_HEARTBEAT_S, KittyWorker

HEARTBEAT_S = IDLE_HEARTBEAT_S / 3


@contextmanager
def idle_worker(settings: Settings, engine: str, *, beat_age_s: float = 0) -> Iterator[KittyWorker]:
    """`beat_age_s`: how old its last heartbeat looks (a killed worker's key lingers like this)."""
    conn = connect_redis(settings.redis_url)
    worker = KittyWorker(engine_queues(conn, settings, engine), connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    worker.heartbeat()
    stop = threading.Event()
    if beat_age_s:
        conn.hset(worker.key, "last_heartbeat", utcformat(datetime.now(UTC) - timedelta(seconds=beat_age_s)))
    else:

        def beat() -> None:  # as an idle worker does, so it stays live however long the test runs
            while not stop.wait(HEARTBEAT_S):
                worker.heartbeat()

        threading.Thread(target=beat, daemon=True).start()
    try:
        yield worker
    finally:
        stop.set()
        worker.register_death()
        conn.close()


@contextmanager
def idle_workers(settings: Settings, engines: list[str]) -> Iterator[None]:
    """`idle_worker` for each of `engines`."""
    with ExitStack() as stack:
        for engine in engines:
            stack.enter_context(idle_worker(settings, engine))
        yield

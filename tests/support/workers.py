"""A worker registered in Redis exactly as `images-worker --engine ENGINE` registers itself, that never
takes a job: the service then sees a live worker for the engine (and accepts its jobs even with its
server down), and those jobs stay queued."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from rq.serializers import JSONSerializer
from rq.utils import utcformat

from services.images_service.queue import connect_redis, engine_queues
from services.images_service.settings import Settings
from services.images_service.worker.rq_worker import KittyWorker


@contextmanager
def idle_worker(settings: Settings, engine: str, *, beat_age_s: float = 0) -> Iterator[KittyWorker]:
    """`beat_age_s`: how old its last heartbeat looks (a killed worker's key lingers like this)."""
    conn = connect_redis(settings.redis_url)
    worker = KittyWorker(engine_queues(conn, settings, engine), connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    worker.heartbeat()
    if beat_age_s:
        conn.hset(worker.key, "last_heartbeat", utcformat(datetime.now(UTC) - timedelta(seconds=beat_age_s)))
    try:
        yield worker
    finally:
        worker.register_death()
        conn.close()

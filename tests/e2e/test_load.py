"""Load through the gateway: 1,000 generate requests from 50 concurrent clients against the real
gateway and images-service processes. Every request is accepted or refused with 429; every accepted
job is accounted for exactly once; a worker drains the queue."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from rq.serializers import JSONSerializer

from services.images_service.gallery import GalleryIndex
from services.images_service.models import ModelRegistry
from services.images_service.queue import connect_redis, engine_queues
from services.images_service.storage import make_store
from services.images_service.worker.rq_worker import KittyWorker
from services.images_service.worker.tasks import Runtime, set_runtime
from tests.support.fakes import FakeEngine
from tests.support.harness import make_settings
from tests.support.servers import free_port, start_process

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
LOAD_DB = 8
REQUESTS, CLIENTS = 1_000, 50
PRO_KEY, FREE_KEY = "load-pro-key", "load-free-key"
FREE_DAILY_IMAGES = 50
"""HIP-35's free tier: the free clients' requests beyond this are refused with 429."""

BODY = {"prompt": "a crowd of tiny robots", "model": "fake-model", "steps": 1}


async def submit_all(gateway_url: str) -> list[tuple[str, int, str | None]]:
    """(key, status, job_id) for every request; half the clients use each key."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(REQUESTS):
        queue.put_nowait(number)
    results: list[tuple[str, int, str | None]] = []

    async def client(key: str) -> None:
        async with httpx.AsyncClient(base_url=gateway_url, headers={"X-API-Key": key}, timeout=60) as http:
            while not queue.empty():
                queue.get_nowait()
                response = await http.post("/api/images/generate", json=BODY)
                job_id = response.json().get("job_id") if response.status_code == 202 else None
                if response.status_code == 429:
                    assert response.json()["error"]["code"] == "RATE_LIMITED"
                    assert int(response.headers["Retry-After"]) > 0
                results.append((key, response.status_code, job_id))

    await asyncio.gather(*(client(PRO_KEY if n % 2 else FREE_KEY) for n in range(CLIENTS)))
    return results


def test_thousand_submits_are_accepted_or_429_and_every_job_is_accounted_for(
    tmp_path: Path, redis_server: str
) -> None:
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{LOAD_DB}"
    redis.Redis.from_url(redis_url).flushdb()
    settings = make_settings(tmp_path, redis_url)
    images_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "IMAGES_DATA_DIR": str(settings.data_dir),
        "MODELS_YAML": str(settings.models_yaml),
        "IMAGES_PORT": str(images_port),
        "IMAGES_API_KEYS": f"{PRO_KEY}:pro,{FREE_KEY}:free",
        "IMAGES_BASE": f"http://127.0.0.1:{images_port}",
        "GATEWAY_PORT": str(gateway_port),
    }
    env.pop("S3_BUCKET", None)
    logs = tmp_path / "logs"
    service = start_process(
        [str(BIN / "images-service")], env, f"http://127.0.0.1:{images_port}/readyz", logs / "images.log"
    )
    gateway = start_process(
        [str(BIN / "gateway")], env, f"http://127.0.0.1:{gateway_port}/readyz", logs / "gateway.log"
    )
    try:
        results = asyncio.run(submit_all(f"http://127.0.0.1:{gateway_port}"))
    finally:
        gateway.stop()
        service.stop()

    assert len(results) == REQUESTS
    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {202, 429}, statuses
    accepted = [job_id for _, status, job_id in results if status == 202]
    free_accepted = sum(1 for key, status, _ in results if key == FREE_KEY and status == 202)
    assert free_accepted == FREE_DAILY_IMAGES
    assert statuses[429] == sum(1 for key, _, _ in results if key == FREE_KEY) - FREE_DAILY_IMAGES
    assert len(set(accepted)) == len(accepted)  # no duplicates

    connection = connect_redis(redis_url)
    queues = engine_queues(connection, settings, "diffusers")
    priority, normal = queues
    accepted_by = {
        key: [job for k, status, job in results if k == key and status == 202] for key in (PRO_KEY, FREE_KEY)
    }
    # None lost, none extra: the pro key's jobs wait in the priority queue, the free key's in the other.
    assert sorted(priority.job_ids) == sorted(accepted_by[PRO_KEY])
    assert sorted(normal.job_ids) == sorted(accepted_by[FREE_KEY])

    store = make_store(settings)
    set_runtime(Runtime(settings, ModelRegistry(settings.models_yaml), store, {"diffusers": FakeEngine()}))
    try:
        KittyWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)
    finally:
        set_runtime(None)
    assert priority.count == normal.count == 0
    finished = [job for queue in queues for job in queue.finished_job_registry.get_job_ids()]
    assert sorted(finished) == sorted(accepted)
    assert GalleryIndex(connection, settings.queue_prefix).count() == len(accepted)

"""The whole stack as a user runs it, for end-to-end and browser tests: the images-service, one
diffusers worker on the tiny pipelines and the gateway, as processes on free ports, on a real Redis
and the filesystem store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from services.images_service.settings import Settings
from tests.support.servers import ProcessHandle, free_port, start_process

BIN = Path(sys.executable).parent
"""Where the venv's console scripts (images-service, images-worker, gateway) live."""

PRELOADED_MODEL = "tiny-sd15"
"""The model the worker loads before it takes jobs, so the first job does not pay the load."""


@dataclass
class Stack:
    gateway_url: str
    images_url: str
    metrics_url: str
    settings: Settings
    processes: dict[str, ProcessHandle]


@contextmanager
def run_stack(data_dir: Path, redis_server: str, models_yaml: Path, *, redis_db: int) -> Iterator[Stack]:
    """Start the three processes against `redis_db` of `redis_server` (flushed first, so an earlier
    module's gallery index and queues are not seen) and `data_dir`; stop them all on exit."""
    images_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    redis_url = f"{redis_server.rsplit('/', 1)[0]}/{redis_db}"
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "IMAGES_DATA_DIR": str(data_dir),
        "MODELS_YAML": str(models_yaml),
        "IMAGES_PORT": str(images_port),
        "IMAGES_WORKER_METRICS_PORT": str(metrics_port),
        "IMAGES_BASE": f"http://127.0.0.1:{images_port}",
        "GATEWAY_PORT": str(gateway_port),
        "HF_HUB_OFFLINE": "1",
        # One torch thread: the worker shares two cores with the test, the browser and the API.
        "OMP_NUM_THREADS": "1",
    }
    env.pop("S3_BUCKET", None)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    processes: dict[str, ProcessHandle] = {}
    try:
        processes["images"] = start_process(
            [str(BIN / "images-service")], env, f"http://127.0.0.1:{images_port}/readyz", logs / "images.log"
        )
        processes["worker"] = start_process(
            [str(BIN / "images-worker"), "--preload", PRELOADED_MODEL],
            env,
            f"http://127.0.0.1:{metrics_port}/metrics",
            logs / "worker.log",
        )
        processes["gateway"] = start_process(
            [str(BIN / "gateway")], env, f"http://127.0.0.1:{gateway_port}/readyz", logs / "gateway.log"
        )
        settings = Settings(_env_file=None, data_dir=data_dir, redis_url=redis_url)  # type: ignore[call-arg]
        yield Stack(
            gateway_url=f"http://127.0.0.1:{gateway_port}",
            images_url=f"http://127.0.0.1:{images_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            settings=settings,
            processes=processes,
        )
    finally:
        for proc in processes.values():
            proc.stop()

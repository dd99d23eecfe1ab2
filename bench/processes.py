"""The real processes a bench runs against, on free loopback ports: redis-server, moto's S3 server, the
images-service, the gateway and diffusers workers. Built on `services.common.processes`, the helpers
the test suite's fixtures use, so the bench starts them exactly as the end-to-end tests do; every
process stops when the bench's `ExitStack` closes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from rq import Queue, Worker

from services.common.processes import (
    ProcessHandle,
    free_port,
    moto_env,
    redis_server_executable,
    start_process,
    wait_for_redis,
)

BIN = Path(sys.executable).parent
"""The venv's console scripts: images-service, images-worker, gateway."""

READY_TIMEOUT_S = 90.0
"""How long a process may take to answer; a worker imports torch first, slow on a busy 2-core box."""

OUR_PREFIXES = ("IMAGES_", "GATEWAY_", "S3_", "KITTY_")
OUR_NAMES = frozenset({"REDIS_URL", "MODELS_YAML", "IMAGE_ENGINE", "HF_HOME"})
"""The developer's own settings are kept out of the bench's processes: it configures them itself."""


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any KITTY setting, offline for the model hub, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(OUR_PREFIXES) and name not in OUR_NAMES
    }
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class Processes:
    """Starts processes under one `ExitStack` and one folder of logs."""

    stack: ExitStack
    workdir: Path

    @property
    def logs(self) -> Path:
        path = self.workdir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(
        self, name: str, cmd: list[str], env: Mapping[str, str], ready_url: str | None
    ) -> ProcessHandle:
        # cwd is the bench's own folder, so a developer's .env in the repository is not read.
        handle = start_process(
            cmd, env, ready_url, self.logs / f"{name}.log", cwd=self.workdir, timeout=READY_TIMEOUT_S
        )
        self.stack.callback(handle.stop)
        return handle

    def redis(self) -> str:
        """A scratch redis-server (no persistence); returns its URL without a database number."""
        port = free_port()
        log = self.logs / "redis.log"
        handle = self.start(
            "redis",
            [
                redis_server_executable(),
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)),
            ],
            os.environ,
            None,
        )
        url = f"redis://127.0.0.1:{port}"
        wait_for_redis(f"{url}/0", handle.process, log, READY_TIMEOUT_S)
        return url

    def moto(self) -> str:
        """moto's S3 server as a process; returns its endpoint."""
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        self.start(
            "moto",
            [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
            moto_env(),
            f"{endpoint}/",
        )
        return endpoint

    def images_service(self, name: str, env: dict[str, str]) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**env, "IMAGES_PORT": str(port), "IMAGES_BASE": url}
        self.start(name, [str(BIN / "images-service")], env, f"{url}/readyz")
        return url

    def gateway(self, images_url: str, env: dict[str, str]) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.start(
            "gateway",
            [str(BIN / "gateway")],
            {**env, "GATEWAY_PORT": str(port), "IMAGES_BASE": images_url},
            f"{url}/readyz",
        )
        return url

    def worker(self, name: str, env: dict[str, str], *args: str) -> ProcessHandle:
        """A diffusers worker; ready once its metrics port answers (it has imported torch and made
        its engine by then). Wait for `wait_for_workers` before timing a job against it."""
        port = free_port()
        return self.start(
            name,
            [str(BIN / "images-worker"), "--metrics-port", str(port), *args],
            {**env, "IMAGES_WORKER_METRICS_PORT": str(port)},
            f"http://127.0.0.1:{port}/metrics",
        )


def wait_for_workers(redis_url: str, queue_name: str, count: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Until exactly `count` workers are registered on `queue_name` (RQ's worker set): a started
    worker has begun listening, a stopped one has said goodbye."""
    deadline = time.monotonic() + timeout
    while worker_count(redis_url, queue_name) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not {count} worker(s) on {queue_name} after {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Stack:
    """The images-service and the gateway on one Redis database and a filesystem store; workers are
    started by the measurement that needs them."""

    images_url: str
    gateway_url: str
    redis_url: str
    queue_name: str
    env: dict[str, str]


STACK_PREFIX = "bench-stack"
"""IMAGES_QUEUE_PREFIX of the stack: its queue is ``bench-stack:diffusers``."""


def start_stack(procs: Processes, redis_base: str, models_yaml: Path, *, db: int = 3) -> Stack:
    redis_url = f"{redis_base}/{db}"
    with Redis.from_url(redis_url) as connection:
        connection.flushdb()
    env = clean_env(
        REDIS_URL=redis_url,
        IMAGES_DATA_DIR=str(procs.workdir / "stack"),
        MODELS_YAML=str(models_yaml),
        IMAGES_QUEUE_PREFIX=STACK_PREFIX,
    )
    images_url = procs.images_service("images-service", env)
    gateway_url = procs.gateway(images_url, env)
    return Stack(images_url, gateway_url, redis_url, f"{STACK_PREFIX}:diffusers", env)


def worker_count(redis_url: str, queue_name: str) -> int:
    with Redis.from_url(redis_url) as connection:
        return len(Worker.all(queue=Queue(queue_name, connection=connection)))

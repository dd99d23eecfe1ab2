"""Faults caused for real, seen as a user sees them: a worker killed mid-job, a job past its
timeout, a running job canceled, Redis stopped and restarted. No job accepted is lost or stuck."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.deployment import Deployment, is_terminal
from tests.support.servers import ProcessHandle, free_port, redis_server_executable, start_process

pytestmark = pytest.mark.e2e

FAULT_DEADLINE_S = 60.0
"""The issue's bound: a lost worker's job is detected (and retried or failed) within 60 s."""

LONG_JOB = {"prompt": "a long night", "model": "tiny-sd15", "steps": 150, "width": 64, "height": 64}
"""A few seconds of work for the tiny pipeline: long enough to be interrupted mid-way, short enough
to run again after a retry on a busy machine."""

SLOW_JOB = {**LONG_JOB, "width": 128, "height": 128}
"""Surely longer than the 2 s timeout of the timeout test."""

SHORT_JOB = {"prompt": "a short day", "model": "tiny-sd15", "steps": 2}


def test_killed_worker_job_is_retried_on_another_worker(deploy: Callable[..., Deployment]) -> None:
    stack = deploy(IMAGES_LOST_JOB_RETRIES="1")
    stack.start_api()
    first = stack.start_worker("worker-1")
    job_id = stack.generate(LONG_JOB)
    stack.running_mid_way(job_id)

    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    stack.start_worker("worker-2")
    requeued = stack.wait_for(job_id, lambda v: v["status"] != "started" or v["progress"]["step"] < 3)
    assert time.monotonic() - killed_at < FAULT_DEADLINE_S
    assert requeued["status"] in ("queued", "started", "done")

    view = stack.wait_for(job_id, is_terminal)
    assert view["status"] == "done" and view["progress"] == {"step": 150, "total": 150}
    assert stack.http.post("/api/images/select", json={"key": view["result"]["png_key"]}).status_code == 200


def test_killed_worker_without_retries_left_ends_as_worker_lost(deploy: Callable[..., Deployment]) -> None:
    stack = deploy(IMAGES_LOST_JOB_RETRIES="0")
    stack.start_api()
    worker = stack.start_worker("worker")
    job_id = stack.generate(LONG_JOB)
    stack.running_mid_way(job_id)

    os.kill(worker.pid, signal.SIGKILL)
    view = stack.wait_for(job_id, is_terminal, timeout=FAULT_DEADLINE_S)
    assert view["status"] == "error" and view["error"]["code"] == "WORKER_LOST"
    assert view["error"]["remediation"]


def test_timeout_ends_the_job_and_the_worker_takes_the_next(deploy: Callable[..., Deployment]) -> None:
    stack = deploy(IMAGES_JOB_TIMEOUT="2")
    stack.start_api()
    worker = stack.start_worker("worker")
    slow = stack.generate(SLOW_JOB)
    quick = stack.generate(SHORT_JOB)

    assert stack.wait_for(slow, is_terminal)["error"]["code"] == "ENGINE_TIMEOUT"
    view = stack.wait_for(quick, is_terminal)
    assert view["status"] == "done", view
    assert worker.is_running()


def test_cancel_stops_a_running_job_at_its_next_step(deploy: Callable[..., Deployment]) -> None:
    stack = deploy()
    stack.start_api()
    worker = stack.start_worker("worker")
    job_id = stack.generate(LONG_JOB)
    step = stack.running_mid_way(job_id)["progress"]["step"]

    assert stack.http.post(f"/api/images/jobs/{job_id}/cancel").status_code == 200
    view = stack.wait_for(job_id, is_terminal, timeout=30)
    assert view["status"] == "canceled" and view["error"]["code"] == "CANCELED"
    assert view["progress"]["step"] < 150 and view["progress"]["step"] >= step
    assert stack.http.get("/api/images/latest").json()["items"] == []

    after = stack.generate(SHORT_JOB)
    assert stack.wait_for(after, is_terminal)["status"] == "done"
    assert worker.is_running()


class RedisProcess:
    """A redis-server of our own, with AOF on, that the test stops and starts again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.handle: ProcessHandle | None = None

    def start(self) -> None:
        import redis

        self.handle = start_process(
            [
                redis_server_executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            None,
            None,
            self.directory / "redis.log",
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()  # SIGTERM: Redis flushes its AOF before it exits


def test_redis_restart_is_503_meanwhile_then_recovers_with_queued_jobs(
    deploy: Callable[..., Deployment], tmp_path: Path, tiny_models: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisProcess(redis_dir)
    server.start()
    stack = Deployment(tmp_path, server.url, tiny_models, IMAGES_WORKER_HEARTBEAT="0.5")
    try:
        stack.start_api()
        waiting = stack.generate(SHORT_JOB)  # no worker yet: it stays queued

        server.stop()
        refused = stack.http.post("/api/images/generate", json=SHORT_JOB)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "QUEUE_UNAVAILABLE"
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"]["code"] == "QUEUE_UNAVAILABLE"

        server.start()
        assert stack.view(waiting)["status"] == "queued"  # AOF kept the queued job
        stack.start_worker("worker")
        assert stack.wait_for(waiting, is_terminal)["status"] == "done"

        server.stop()  # the worker is idle now, waiting on Redis
        time.sleep(1)
        server.start()
        assert stack.http.get("/readyz").status_code == 200
        after = stack.generate(SHORT_JOB)
        assert stack.wait_for(after, is_terminal, timeout=90)["status"] == "done"
    finally:
        stack.close()
        server.stop()

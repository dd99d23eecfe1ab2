"""REDIS_URL through Sentinel, failed over for real: a master, its replica and a sentinel (real
redis-server processes); the master is killed (SIGKILL) and the sentinel promotes the replica. While
it does, the API answers 503 QUEUE_UNAVAILABLE in milliseconds (never a 500, never a hang); after,
the same clients find the new master by themselves, the job queued before the kill is still there,
and a worker finishes it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError

from services.images_service.app import create_app
from services.images_service.queue import connect_redis
from services.images_service.storage import make_store
from tests.support.deployment import Deployment, is_terminal
from tests.support.fakes import FakeEngine
from tests.support.harness import Harness, make_settings
from tests.support.servers import ProcessHandle, free_port, redis_server_executable, start_process

SERVICE = "kitty-images"
"""Sentinel's master-name for the pair, the service name of the URL."""

DOWN_AFTER_MS = 500
"""Sentinel's `down-after-milliseconds`: how long the master must not answer before it is down
(production configurations use seconds; the failover window grows with it)."""

FAILOVER_TIMEOUT_MS = 5000
"""Sentinel's `failover-timeout`: a failover that stalls is retried after twice this."""

DEADLINE_S = 60.0
"""Generous bound on anything polled here (replication, promotion, a job): the machine may be busy."""

SHORT_JOB = {"prompt": "a short day", "model": "tiny-sd15", "steps": 2}

LONG_JOB = {"prompt": "a long night", "model": "tiny-sd15", "steps": 150, "width": 64, "height": 64}
"""A few seconds of the tiny pipeline: still rendering when the master is killed."""

T = TypeVar("T")


def poll(probe: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
    """`probe()`'s first truthy value, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def quietly(call: Callable[[], T]) -> T | None:
    try:
        return call()
    except RedisError:
        return None


class SentinelPair:
    """A master with AOF on, a replica of it, and one sentinel watching them (quorum 1)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.master_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        # The first sentinel listed is down (nothing listens there): clients must move on to the next.
        self.url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{self.sentinel_port}/{SERVICE}/0"
        self.processes: dict[str, ProcessHandle] = {}
        self.clients: list[Redis] = []

    def _server(self, name: str, *args: str) -> None:
        workdir = self.directory / name
        workdir.mkdir()
        self.processes[name] = start_process(
            [redis_server_executable(), *args, "--dir", str(workdir), "--daemonize", "no"],
            None,
            None,
            self.directory / f"{name}.log",
        )

    def _client(self, port: int) -> Redis:
        client = Redis(port=port, socket_connect_timeout=1, socket_timeout=5)
        self.clients.append(client)
        return client

    def start(self) -> None:
        node = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "yes")
        self._server("master", "--port", str(self.master_port), *node)
        self._server("replica", "--port", str(self.replica_port), *node)
        master, replica = self._client(self.master_port), self._client(self.replica_port)
        poll(lambda: quietly(master.ping) and quietly(replica.ping), "the master and the replica answer")
        replica.replicaof("127.0.0.1", self.master_port)
        poll(
            lambda: quietly(lambda: replica.info("replication")["master_link_status"] == "up"),
            "replica in sync",
        )
        conf = self.directory / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        self.processes["sentinel"] = start_process(
            [redis_server_executable(), str(conf), "--sentinel"], None, None, self.directory / "sentinel.log"
        )
        # It can promote only a replica it knows of: it learns them from the master's INFO.
        self.sentinel = self._client(self.sentinel_port)
        poll(lambda: quietly(lambda: self.sentinel.sentinel_slaves(SERVICE)), "the sentinel sees the replica")

    def current_master_port(self) -> int | None:
        address = quietly(lambda: self.sentinel.sentinel_get_master_addr_by_name(SERVICE))
        return int(address[1]) if isinstance(address, tuple) else None

    def sync_replica(self) -> None:
        """Return once the replica has every write the master took: WAIT waits for this client's own
        last write, and the replication stream is in order, so a write of ours after theirs will do."""
        master = self._client(self.master_port)
        master.set("test:replication-mark", 1)
        poll(lambda: master.execute_command("WAIT", 1, 1000) >= 1, "the replica acknowledges every write")

    def kill_master(self) -> None:
        os.kill(self.processes["master"].pid, signal.SIGKILL)
        self.processes["master"].process.wait()

    def wait_for_promotion(self) -> None:
        poll(lambda: self.current_master_port() == self.replica_port, "the sentinel promotes the replica")

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for handle in self.processes.values():
            handle.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SentinelPair]:
    pair = SentinelPair(tmp_path / "redis")
    pair.directory.mkdir()
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


def test_a_failover_is_503_meanwhile_then_the_queued_job_is_there_and_runs(
    pair: SentinelPair, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, pair.url)
    store = make_store(settings)
    with TestClient(create_app(settings, store=store)) as client:
        harness = Harness(client, settings, store, {"diffusers": FakeEngine()})
        job_id = harness.generate(seed=7)
        pair.sync_replica()

        pair.kill_master()
        killed_at = time.monotonic()
        answers: list[tuple[float, int, Any]] = []
        while time.monotonic() - killed_at < DEADLINE_S:
            started = time.monotonic()
            response = client.get(f"/api/images/jobs/{job_id}")
            answers.append((time.monotonic() - started, response.status_code, response.json()))
            if response.status_code == 200:
                break
            time.sleep(0.05)
        window = time.monotonic() - killed_at

        refused = [body for _, status, body in answers if status != 200]
        # The request right after the kill cannot succeed: the sentinel still names the dead master.
        assert refused, answers
        assert all(status in (200, 503) for _, status, _ in answers), answers
        assert {body["error"]["code"] for body in refused} == {"QUEUE_UNAVAILABLE"}
        assert answers[-1][1] == 200 and answers[-1][2]["status"] == "queued", "the queued job was lost"
        assert pair.current_master_port() == pair.replica_port
        slowest = max(seconds for seconds, _, _ in answers)
        print(f"failover: 503 for {window:.2f} s ({len(refused)} requests), slowest answer {slowest:.2f} s")

        second = harness.generate(seed=8)  # a submit goes to the new master
        harness.work()  # a worker connected through the same URL finishes both
        assert [harness.job(job)["status"] for job in (job_id, second)] == ["done", "done"]
        with connect_redis(pair.url) as redis:
            assert redis.connection_pool.get_master_address()[1] == pair.replica_port


@pytest.mark.e2e
def test_a_running_worker_process_carries_on_after_a_failover(
    pair: SentinelPair, tmp_path: Path, tiny_models: Path
) -> None:
    stack = Deployment(tmp_path, pair.url, tiny_models)
    try:
        stack.start_api()
        worker = stack.start_worker("worker")
        first = stack.generate(SHORT_JOB)
        assert stack.wait_for(first, is_terminal)["status"] == "done"
        pair.sync_replica()

        pair.kill_master()
        pair.wait_for_promotion()

        def submit() -> str | None:
            response = stack.http.post("/api/images/generate", json=SHORT_JOB)
            assert response.status_code in (202, 503), response.text
            return str(response.json()["job_id"]) if response.status_code == 202 else None

        second = poll(submit, "a submit after the failover")
        view = stack.wait_for(second, is_terminal, timeout=DEADLINE_S * 2)
        assert view["status"] == "done", view
        assert worker.is_running(), worker.log()  # the same process: it was never restarted
        assert stack.view(first)["status"] == "done"  # finished before the kill, still there
    finally:
        stack.close()


@pytest.mark.e2e
def test_a_job_rendering_during_a_failover_finishes_on_the_same_worker_and_so_does_the_next(
    pair: SentinelPair, tmp_path: Path, tiny_models: Path
) -> None:
    stack = Deployment(tmp_path, pair.url, tiny_models, IMAGES_LOST_JOB_RETRIES="1")
    try:
        stack.start_api()
        worker = stack.start_worker("worker-1")
        rendering = stack.generate(LONG_JOB)
        stack.running_mid_way(rendering)
        queued = stack.generate(SHORT_JOB)
        pair.sync_replica()

        pair.kill_master()
        pair.wait_for_promotion()
        # worker-1's progress writes fail while no master answers: the render goes on, its end is
        # recorded on the new master, and the same process goes on to the job queued behind it.
        # (The API answers 503 until the sentinel has promoted the replica: such views are skipped.)
        for job_id in (rendering, queued):
            view = stack.wait_for(job_id, lambda v: "status" in v and is_terminal(v), timeout=DEADLINE_S * 2)
            assert view["status"] == "done", view
        assert worker.is_running(), worker.log()
    finally:
        stack.close()

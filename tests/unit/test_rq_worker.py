"""One test per place `KittyWorker` reaches into RQ's worker (services/images_service/worker/rq_worker.py),
against a real Redis and the installed (locked) rq. A new rq that moves any of them fails here, by
name, before a long job can be rendered twice."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from services.images_service.worker import rq_worker
from services.images_service.worker.rq_worker import (
    MISSED_HEARTBEATS,
    WORKER_TTL_S,
    KittyWorker,
    live_workers,
)

HEARTBEAT_S = 0.2
NAP_S = 2.5
"""Longer than the heartbeat TTL (2 s) and twelve heartbeats."""


def nap(seconds: float) -> str:
    """The job: nothing but time, in the worker's main thread as a render would be."""
    time.sleep(seconds)
    return "rested"


@pytest.fixture
def conn(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def queue(conn: Redis) -> Queue:
    return Queue("rq-touch-points", connection=conn, serializer=JSONSerializer)


def make_worker(queue: Queue) -> KittyWorker:
    worker = KittyWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.set_heartbeat(HEARTBEAT_S)
    return worker


class Watcher(threading.Thread):
    """While the job runs: the registry score of its execution, the worker's last heartbeat, and
    RQ's own cleanup of abandoned jobs run as often as the janitor could (which must find none)."""

    def __init__(self, conn: Redis, queue: Queue, job_id: str, worker_key: str) -> None:
        super().__init__(daemon=True)
        self.registry = StartedJobRegistry(queue=queue)
        self.conn = conn
        self.job_id = job_id
        self.worker_key = worker_key
        self.samples: list[tuple[float, float]] = []
        """(time, score) of the job's entry in the started registry."""
        self.worker_beats: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for entry, score in self.conn.zrange(self.registry.key, 0, -1, withscores=True):
                if entry.decode().startswith(self.job_id):
                    self.samples.append((time.time(), score))
            beat = self.conn.hget(self.worker_key, "last_heartbeat")
            if beat:
                self.worker_beats.add(beat.decode())
            self.registry.cleanup()  # the janitor's call: must find nothing abandoned


def run_job(conn: Redis, queue: Queue, worker: KittyWorker, seconds: float) -> tuple[Job, Watcher]:
    job = queue.enqueue("tests.unit.test_rq_worker.nap", seconds, retry=None)
    watcher = Watcher(conn, queue, job.id, worker.key)
    watcher.start()
    try:
        worker.work(burst=True)  # in the main thread: RQ's signal handlers and death penalty need it
    finally:
        watcher.stop.set()
        watcher.join()
    job.refresh()
    return job, watcher


def test_execute_job_runs_the_job_once_in_process_and_keeps_its_execution_alive(
    conn: Redis, queue: Queue
) -> None:
    """Touch points 1 and 2: our `execute_job` prepares RQ's Execution, performs the job, and the
    heartbeat thread's `maintain_heartbeats(job, execution)` keeps pushing its registry score on."""
    worker = make_worker(queue)
    job, watcher = run_job(conn, queue, worker, NAP_S)

    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == "rested"
    assert len(job.results()) == 1, "performed more than once"
    scores = sorted({score for _, score in watcher.samples})
    assert len(scores) >= 2, "the execution's registry score never moved: no heartbeat reached it"
    assert all(score > sampled_at for sampled_at, score in watcher.samples), "an entry was expired"
    assert len(watcher.worker_beats) >= 3, "the worker's own heartbeat did not advance during the job"
    assert worker.get_state() == "idle"
    assert StartedJobRegistry(queue=queue).count == 0


def test_heartbeat_ttl_outlasts_missed_beats_despite_whole_second_scores(queue: Queue) -> None:
    """Touch point 3: `get_heartbeat_ttl(job, working_time)` keeps its signature, and its TTL leaves
    at least MISSED_HEARTBEATS intervals after RQ truncates `now` to whole seconds."""
    worker = make_worker(queue)
    job = queue.enqueue("tests.unit.test_rq_worker.nap", 0)
    for heartbeat in (0.2, 0.5, 1.0, 10.0):
        worker.set_heartbeat(heartbeat)
        ttl = worker.get_heartbeat_ttl(job, working_time=5.0)
        assert ttl - 1 >= MISSED_HEARTBEATS * heartbeat
        assert ttl <= MISSED_HEARTBEATS * heartbeat + 2  # a dead worker is still noticed quickly


def test_monitoring_interval_and_worker_ttl_are_what_rq_uses(conn: Redis, queue: Queue) -> None:
    """Touch point 4: `job_monitoring_interval` (whole seconds, RQ's EXPIRE) and `worker_ttl`."""
    worker = make_worker(queue)
    assert worker.job_monitoring_interval == math.ceil(HEARTBEAT_S) == 1
    assert worker.worker_ttl == WORKER_TTL_S
    assert worker.dequeue_timeout == WORKER_TTL_S - 15
    worker.register_birth()
    worker.heartbeat()
    assert 0 < conn.ttl(worker.key) <= WORKER_TTL_S + 60


def test_live_workers_reads_last_heartbeat_and_queue_names(conn: Redis, queue: Queue) -> None:
    """Touch point 5: `Worker.all` hydrates `last_heartbeat` and the queue names we filter on; a
    killed worker's key (heartbeat too old) does not count as live."""
    other = Queue("rq-touch-points-other", connection=conn, serializer=JSONSerializer)
    alive, killed, elsewhere = make_worker(queue), make_worker(queue), make_worker(other)
    for worker in (alive, killed, elsewhere):
        worker.register_birth()
        worker.heartbeat()
    stale = datetime.now(UTC) - timedelta(seconds=WORKER_TTL_S + 5)
    conn.hset(killed.key, "last_heartbeat", utcformat(stale))

    live = live_workers(conn, [queue])
    assert [worker.name for worker in live] == [alive.name]
    beat = rq_worker.last_heartbeat(live[0])
    assert beat is not None and abs((datetime.now(UTC) - beat).total_seconds()) < 5


def test_unsubscribe_returns_at_once_even_when_the_pubsub_thread_waits(queue: Queue) -> None:
    """Touch point 6: with RQ's own `unsubscribe`, this state (the thread has read the unsubscribe
    reply and waits up to 60 s to be subscribed again) held a stopping worker for a minute."""
    worker = make_worker(queue)
    worker.subscribe()
    assert worker.pubsub is not None and worker.pubsub_thread is not None
    deadline = time.monotonic() + 10
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.pubsub.unsubscribe()
    while worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)  # the thread read the reply: it now waits to be subscribed again
    assert not worker.pubsub.subscribed

    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5

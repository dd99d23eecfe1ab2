"""Every place KITTY reaches into RQ's worker, in one module (written for rq>=3,<4).

RQ's default worker forks a work horse per job, which would reload the model every time (measured
2.6 s per job vs 0.35 s resident). `SimpleWorker` runs jobs in-process, but nothing heartbeats
while its job runs: the main thread is busy rendering. `KittyWorker` heartbeats from a thread, so
a job that renders for minutes stays `started` and is never taken for a dead worker's.

The touch points, each with a test in tests/unit/test_rq_worker.py:
  1. `SimpleWorker.execute_job` is overridden (prepare the execution, perform, go idle), so the
     heartbeat thread knows the `Execution` it keeps alive;
  2. `BaseWorker.maintain_heartbeats(job, execution)` is called from that thread;
  3. `BaseWorker.get_heartbeat_ttl(job, working_time)` is overridden: a missed beat or three, not the
     whole job timeout, mark a running job's worker as lost;
  4. the attributes `job_monitoring_interval` (TTL of the worker key while busy) and `worker_ttl`
     (how long an idle worker blocks on the queue between heartbeats) are set;
  5. the worker hash's `last_heartbeat` field is read (`Worker.all`) to tell live workers from the
     keys of killed ones, which RQ keeps for minutes;
  6. `BaseWorker.unsubscribe` is overridden: RQ 3 unsubscribes before it stops its pubsub thread,
     and redis-py 8's `stop()` then waits without bound for a thread that may sit in a 60 s wait
     (an idle worker took a minute to exit on SIGTERM, now and then);
  7. `SimpleWorker.execute_job` also catches Redis connection errors out of `perform_job` (RQ's
     worker loop would exit on them): a Redis restart or failover while a job ends costs that job a
     lost-worker retry, not the worker;
  8. `BaseWorker.dequeue_job_and_maintain_ttl` is wrapped for model-aware dispatch (dispatch.py):
     the worker's `_ordered_queues` are set before each dequeue (its held models' queues first),
     RQ blocks on them for at most IMAGES_DISPATCH_WAIT_S, then the worker may take a job that
     waited that long in another model's queue (`Queue._fetch_dequeued_job` after an LREM);
  9. the same wrapper hands each dequeued job to `QueueControl.divert` (queue_control.py): a job of
     a paused owner is set aside, and while an admin paused the whole queue the worker takes none
     (it waits as RQ's `check_for_suspension` does, `WorkerStatus.SUSPENDED`, heartbeating);
     tested with the queue (tests/integration/test_queue_control.py, tests/e2e/test_queue_pause.py).
RQ's public API covers the rest: `Queue`, `Job`, `StartedJobRegistry.cleanup` (the janitor).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.worker import BaseWorker, WorkerStatus

from ..dispatch import Dispatch
from ..queue_control import PAUSE_POLL_S, Diverted, QueueControl

log = logging.getLogger("kitty.images.worker")

MISSED_HEARTBEATS = 3
"""A running job whose last heartbeat is this many intervals old belongs to a dead worker (RQ's
default TTL for a non-forking worker is the whole job timeout plus a minute: far too late to
notice a kill -9)."""

IDLE_HEARTBEAT_S = 15
"""An idle worker blocks on its queues this long between heartbeats (RQ: worker_ttl - 15)."""

WORKER_TTL_S = IDLE_HEARTBEAT_S + 15
"""RQ's `worker_ttl`: a worker whose last heartbeat is older than this is not live."""

REDIS_RETRY_MAX_S = 5.0
"""Longest pause between PINGs of a worker waiting for Redis to come back after losing it mid-job."""


class KittyWorker(SimpleWorker):
    """RQ's non-forking worker, heartbeating from a thread while a job runs."""

    heartbeat_s: float = 10.0
    """Seconds between heartbeats while a job runs (IMAGES_WORKER_HEARTBEAT)."""
    dispatch: Dispatch | None = None
    """Model-aware dispatch (None: the queues given, in order, as RQ takes them)."""
    control: QueueControl | None = None
    """Pauses (None: from the dispatch's settings when there is one, else none are honoured)."""

    def __init__(self, queues: list[Queue], **kwargs: Any) -> None:
        kwargs.setdefault("worker_ttl", WORKER_TTL_S)
        super().__init__(queues, **kwargs)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        control = self.queue_control()
        while True:
            if control is not None and control.is_everyone_paused():
                if timeout is None:
                    return None  # a burst worker has nothing it may take
                self.wait_while_paused(control)
                if self._stop_requested:
                    return None
            result = self.dequeue_dispatched(timeout, max_idle_time)
            if result is None or control is None:
                return result
            diverted = control.divert(*result)
            if diverted is Diverted.RUN:
                return result
            if diverted is Diverted.PUT_BACK and timeout is None:
                return None

    def queue_control(self) -> QueueControl | None:
        if self.control is None and self.dispatch is not None:
            self.control = QueueControl(self.connection, self.dispatch.settings)
        return self.control

    def wait_while_paused(self, control: QueueControl) -> None:
        """Take no job while the whole queue is paused: heartbeat, and look again every second."""
        self.set_state(WorkerStatus.SUSPENDED)
        log.info("the whole queue is paused: taking no new job", extra={"worker": self.name})
        while not self._stop_requested and control.is_everyone_paused():
            self.heartbeat()
            time.sleep(PAUSE_POLL_S)
        self.set_state(WorkerStatus.IDLE)

    def dequeue_dispatched(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        dispatch = self.dispatch
        if dispatch is None or dispatch.wait_s <= 0:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        # RQ blocks (BLPOP) whole seconds at a time; a burst worker (timeout None) does not block.
        wait = None if timeout is None else max(1, math.ceil(dispatch.wait_s))
        # A burst worker drains everything; a waiting one takes what waited long enough, or what no
        # worker holds the model of any more.
        min_age_s = 0.0 if wait is None else dispatch.wait_s
        idle_since = time.monotonic()
        while True:
            self._ordered_queues = dispatch.queues()
            result = super().dequeue_job_and_maintain_ttl(None)  # its own queues, without blocking
            if result is None:
                result = dispatch.steal(self._ordered_queues, min_age_s=min_age_s)
            if result is not None or wait is None:
                return result
            result = super().dequeue_job_and_maintain_ttl(wait, max_idle_time=wait)
            if result is not None:
                return result
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None

    def note_dispatch(self, job: Job) -> None:
        """Record in the job which worker took it and whether its model was loaded here already."""
        if self.dispatch is None:
            return
        model = job.meta.get("model")
        job.meta["worker"] = self.name
        job.meta["warm"] = model is not None and model in self.dispatch.resident()
        job.save_meta()

    def set_heartbeat(self, seconds: float) -> None:
        self.heartbeat_s = seconds
        # RQ puts this into EXPIRE commands, which take whole seconds.
        self.job_monitoring_interval = max(1, math.ceil(seconds))

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ scores registry entries as `int(now) + ttl`: the truncation takes up to a second off.
        return math.ceil(MISSED_HEARTBEATS * self.heartbeat_s) + 1

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.note_dispatch(job)
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="heartbeat", daemon=True)
        beat.start()
        lost_redis = False
        try:
            self.perform_job(job, queue, execution)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis went away while RQ recorded the job's end (a restart, a Sentinel failover): the
            # worker waits for it and lives on; the job, left started with no heartbeat, is put
            # back by the janitor as a lost worker's (IMAGES_LOST_JOB_RETRIES).
            log.error("lost Redis while ending a job", extra={"job_id": job.id, "error": str(exc)})
            lost_redis = True
        finally:
            stop.set()
            beat.join()
        if lost_redis:
            self.wait_for_redis()
        if self.dispatch is not None:
            self._advertise()
        self.set_state(WorkerStatus.IDLE)

    def wait_for_redis(self) -> None:
        """Return once Redis answers again (backing off to `REDIS_RETRY_MAX_S` between PINGs), so
        RQ's loop, which quits on a Redis error outside its wait for jobs, goes on."""
        delay = 0.5
        while True:
            try:
                self.connection.ping()
                return
            except (RedisConnectionError, RedisTimeoutError):
                time.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)

    def _advertise(self) -> None:
        try:
            self.dispatch.advertise()  # type: ignore[union-attr]
        except Exception:  # Redis away: the card says it again within seconds
            log.warning("could not advertise the models held", exc_info=True)

    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if thread is None or self.pubsub is None:
            return
        thread.stop(timeout=0)  # clear its running flag first, without waiting ...
        self.pubsub.unsubscribe()  # ... so the reply to this ends its loop
        thread.join(timeout=1)  # a daemon thread: one still waiting is left behind
        self.pubsub.close()

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job, execution)
            except Exception:  # a missed beat is retried next interval; never kill the job for it
                log.warning("heartbeat failed", extra={"job_id": job.id}, exc_info=True)


def last_heartbeat(worker: BaseWorker) -> datetime | None:
    beat = worker.last_heartbeat
    if beat is not None and beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)  # RQ stores UTC without an offset
    return beat


def live_workers(connection: Redis, queues: list[Queue], *, now: datetime | None = None) -> list[BaseWorker]:
    """Workers serving any of `queues` that heartbeated within `WORKER_TTL_S` (RQ keeps a killed
    worker's key for minutes, so its mere presence says little)."""
    now = now or datetime.now(UTC)
    names = {queue.name for queue in queues}
    live = []
    for worker in Worker.all(connection=connection):
        if not names.intersection(worker.queue_names()):
            continue
        beat = last_heartbeat(worker)
        if beat is not None and (now - beat).total_seconds() <= WORKER_TTL_S:
            live.append(worker)
    return live

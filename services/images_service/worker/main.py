"""`images-worker`: a non-forking RQ worker that keeps its engines (and their models) resident.

RQ's default worker forks a work horse per job, which would reload the model every time (measured
2.6 s per job vs 0.35 s resident). `SimpleWorker` runs jobs in-process but sends no heartbeats while
a job runs, so `KittyWorker` keeps them alive from a thread.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading

from prometheus_client import start_http_server
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from services.common.logs import configure_logging

from ..gallery import GalleryIndex
from ..queue import connect_redis, engine_queues
from ..settings import get_settings
from .spool import SpoolUploader
from .tasks import Runtime, set_runtime

log = logging.getLogger("kitty.images.worker")

MISSED_HEARTBEATS = 3
"""A running job whose last heartbeat is this many intervals old belongs to a dead worker (RQ's
default TTL for a non-forking worker is the whole job timeout plus a minute: far too late to
notice a kill -9)."""


class KittyWorker(SimpleWorker):
    """RQ's non-forking worker, heartbeating from a thread while a job runs."""

    heartbeat_s: float = 10.0
    """Seconds between heartbeats while a job runs (IMAGES_WORKER_HEARTBEAT)."""

    def set_heartbeat(self, seconds: float) -> None:
        self.heartbeat_s = seconds
        # RQ puts this into EXPIRE commands, which take whole seconds.
        self.job_monitoring_interval = max(1, math.ceil(seconds))

    def get_heartbeat_ttl(self, job: Job) -> int:
        return max(1, math.ceil(MISSED_HEARTBEATS * self.heartbeat_s))

    def execute_job(self, job: Job, queue: Queue) -> None:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="heartbeat", daemon=True)
        beat.start()
        try:
            super().execute_job(job, queue)
        finally:
            stop.set()
            beat.join()

    def _beat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job)
            except Exception:  # a missed beat is retried next interval; never kill the job for it
                log.warning("heartbeat failed", extra={"job_id": job.id}, exc_info=True)


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="images-worker", description="Run a KITTY images worker.")
    parser.add_argument("--engine", default=settings.image_engine, help="engine whose queue to serve")
    parser.add_argument("--preload", metavar="MODEL", help="load this model before taking jobs")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--metrics-port", type=int, default=settings.worker_metrics_port)
    args = parser.parse_args(argv)

    configure_logging(settings.log_level)
    # These must be in the environment before torch is imported.
    if settings.pytorch_mps_high_watermark_ratio is not None:
        os.environ["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] = settings.pytorch_mps_high_watermark_ratio
    if settings.hf_home is not None:
        os.environ["HF_HOME"] = str(settings.hf_home)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=settings.host)

    runtime = Runtime.from_settings(settings)
    set_runtime(runtime)
    engine = runtime.engine(args.engine)
    if args.preload:
        preload = getattr(engine, "preload", None)
        if preload is not None:
            preload(args.preload)

    connection = connect_redis(settings.redis_url)
    uploader = SpoolUploader(
        runtime.spool,
        runtime.store,
        connection,
        GalleryIndex(connection, settings.queue_prefix),
        settings.spool_retry_s,
    )
    uploader.start()
    queues = engine_queues(connection, settings, args.engine)
    worker = KittyWorker(queues, connection=connection, serializer=JSONSerializer)
    worker.set_heartbeat(settings.heartbeat_s)
    log.info("worker starting", extra={"engine": args.engine, "queues": [q.name for q in queues]})
    try:
        worker.work(burst=args.burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    finally:
        uploader.stop()
        runtime.close()

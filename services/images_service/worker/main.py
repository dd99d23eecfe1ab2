"""`images-worker`: a non-forking RQ worker that keeps its engines (and their models) resident
(`KittyWorker`, in rq_worker.py with every other touch of RQ's worker internals)."""

from __future__ import annotations

import argparse
import logging
import os

from prometheus_client import start_http_server
from rq.serializers import JSONSerializer

from services.common.logs import configure_logging

from ..gallery import GalleryIndex
from ..queue import connect_redis, engine_queues
from ..settings import get_settings
from .rq_worker import KittyWorker
from .spool import SpoolUploader
from .tasks import Runtime, set_runtime

log = logging.getLogger("kitty.images.worker")


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

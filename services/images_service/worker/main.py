"""`images-worker`: a non-forking RQ worker that keeps its engines (and their models) resident
(`KittyWorker`, in rq_worker.py with every other touch of RQ's worker internals)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from functools import partial

from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.serializers import JSONSerializer

from services.common.logs import configure_logging
from services.common.server import PortUnavailable, binding

from ..dispatch import Dispatch
from ..gallery import GalleryIndex
from ..queue import connect_redis, engine_queues
from ..redaction import redact_url
from ..settings import get_settings
from ..storage.claim import StoreShared, claim_store
from .card import CardPublisher, resident_models
from .rq_worker import KittyWorker
from .spool import SpoolUploader
from .tasks import Runtime, set_runtime

log = logging.getLogger("kitty.images.worker")

REDIS_WAIT_S = 30.0
"""How long a worker started before its Redis (compose, launchd, a reboot) retries before it gives
up with one line and a non-zero exit, leaving further restarts to its supervisor (`--redis-wait`)."""

REDIS_RETRY_FIRST_S = 0.5
"""First pause between PINGs of a Redis that does not answer; doubled after each, up to the next."""

REDIS_RETRY_MAX_S = 5.0
"""Longest pause between PINGs while waiting for Redis."""

UPLOADER_JOIN_S = 5.0
"""How long a stopping worker lets a spool upload in progress finish (it is retried at the next
start otherwise: objects are put again, nothing is lost)."""


def wait_for_redis(connection: Redis, url: str, wait_s: float) -> None:
    """Return once Redis answers; retry unreachable ones with backoff for `wait_s` seconds, then
    exit with one line saying what, where and what to do (never a traceback)."""
    deadline = time.monotonic() + wait_s
    delay = REDIS_RETRY_FIRST_S
    where = redact_url(url)
    while True:
        try:
            connection.ping()
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            error: RedisError = exc
        except RedisError as exc:  # it answered, but refuses us: waiting will not help
            sys.exit(f"images-worker: Redis at {where} refused the worker ({exc}); check REDIS_URL")
        left = deadline - time.monotonic()
        if left <= 0 or isinstance(error, AuthenticationError):
            sys.exit(
                f"images-worker: cannot reach Redis at {where} ({error}) after {wait_s:.0f} s; "
                "start Redis, or set REDIS_URL to one that runs"
            )
        log.warning(
            "Redis not reachable yet; retrying",
            extra={"redis": where, "error": str(error), "retry_in_s": round(min(delay, left), 1)},
        )
        time.sleep(min(delay, left))
        delay = min(delay * 2, REDIS_RETRY_MAX_S)


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="images-worker", description="Run a KITTY images worker.")
    parser.add_argument("--engine", default=settings.image_engine, help="engine whose queue to serve")
    parser.add_argument("--preload", metavar="MODEL", help="load this model before taking jobs")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--metrics-port", type=int, default=settings.worker_metrics_port)
    parser.add_argument(
        "--redis-wait",
        type=float,
        default=REDIS_WAIT_S,
        metavar="SECONDS",
        help="how long to wait for an unreachable Redis at startup before exiting (0: try once)",
    )
    args = parser.parse_args(argv)

    configure_logging(settings.log_level)
    # These must be in the environment before torch is imported.
    if settings.pytorch_mps_high_watermark_ratio is not None:
        os.environ["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] = settings.pytorch_mps_high_watermark_ratio
    if settings.hf_home is not None:
        os.environ["HF_HOME"] = str(settings.hf_home)
    if args.metrics_port:
        try:
            with binding(settings.host, args.metrics_port):
                start_http_server(args.metrics_port, addr=settings.host)
        except PortUnavailable as exc:
            setting = "IMAGES_WORKER_METRICS_PORT (or --metrics-port)"
            sys.exit(f"images-worker: {exc.explain(setting)} (0 turns /metrics off)")
    # Before the engine loads its model: a wrong REDIS_URL is said in seconds, not after a minute.
    try:
        connection = connect_redis(settings.redis_url)
    except ValueError as exc:  # a malformed REDIS_URL: the message names the accepted forms
        sys.exit(f"images-worker: REDIS_URL: {exc}")
    wait_for_redis(connection, settings.redis_url, args.redis_wait)

    runtime = Runtime.from_settings(settings)
    try:
        claim_store(connection, settings, runtime.store)
    except StoreShared as exc:
        sys.exit(f"images-worker: {exc}")
    set_runtime(runtime)
    engine = runtime.engine(args.engine)
    if args.preload:
        preload = getattr(engine, "preload", None)
        if preload is not None:
            preload(args.preload)

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
    worker.dispatch = Dispatch(connection, settings, args.engine, partial(resident_models, engine))
    card = CardPublisher(connection, settings, worker.name, args.engine, engine, runtime.store)
    card.start()
    log.info("worker starting", extra={"engine": args.engine, "queues": [q.name for q in queues]})
    try:
        worker.work(burst=args.burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    finally:
        card.stop()
        uploader.stop()
        uploader.join(timeout=UPLOADER_JOIN_S)
        runtime.close()

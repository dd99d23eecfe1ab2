"""The images-service app factory and its `images-service` entry point."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI
from redis import Redis

from services.common.api_keys import ApiKeyMiddleware, KeyRing, warn_if_exposed_without_keys
from services.common.limits import RequestLimitsMiddleware
from services.common.logs import configure_logging
from services.common.request_id import RequestIdMiddleware
from services.common.server import PortUnavailable, serve_http

from . import __version__
from .api import audit as audit_api
from .api import collections as collections_api
from .api import engines, handlers, health, images, painter, uploads, upscale
from .audit import AuditLog
from .collections import Collections
from .errors import KittyError
from .gallery import GalleryIndex
from .idempotency import IdempotencyStore
from .metrics import HttpMetricsMiddleware
from .models import ModelRegistry
from .ownership import Ownership, UploadOwners
from .presets import preset_book
from .queue import JobQueue, connect_redis
from .quotas import QuotaLedger
from .retention import sweep_uploads
from .settings import Settings, get_settings
from .storage import Store, make_store

log = logging.getLogger("kitty.images.api")

REBUILD_JOIN_S = 30.0
"""At shutdown, how long to let a gallery rebuild still running finish before closing Redis."""


def rebuild_gallery_if_empty(
    gallery: GalleryIndex, store: Store, settings: Settings, ownership: Ownership
) -> None:
    """A lost or new Redis starts with an empty index; storage is the truth, so rebuild from it.
    Then favourites and boards of the first index layout are rewritten and its keys dropped (both
    nothing to do once done)."""
    try:
        if gallery.count() == 0:
            gallery.rebuild(store, settings.s3_prefix)
        Collections(gallery.redis, gallery.prefix, gallery, ownership).migrate_legacy()
        gallery.drop_legacy()
    except KittyError as exc:
        log.warning("gallery index not rebuilt", extra={"code": exc.code.value, "error": exc.message})


def run_janitor(queue: JobQueue, store: Store, settings: Settings, stop: threading.Event) -> None:
    """Look for jobs of dead workers every IMAGES_JANITOR_INTERVAL: with the default 10 s heartbeat
    (30 s to be declared lost) and 10 s interval, a killed worker's job is requeued or failed within
    40 s. Every IMAGES_UPLOADS_SWEEP_INTERVAL, also delete expired uploads."""
    next_sweep = time.monotonic()
    while not stop.wait(settings.janitor_interval_s):
        chores: list[tuple[str, Callable[[], object]]] = [("lost jobs", queue.reap_lost_jobs)]
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + settings.uploads_sweep_interval_s
            chores.append(("upload sweep", lambda: sweep_uploads(store, settings, datetime.now(UTC))))
        for chore, action in chores:
            try:
                action()
            except KittyError as exc:  # Redis or storage down: /readyz reports it; next round
                log.debug("janitor skipped", extra={"chore": chore, "error": exc.message})
            except Exception:
                log.exception("janitor failed", extra={"chore": chore})


def create_app(
    settings: Settings | None = None,
    *,
    redis: Redis | None = None,
    store: Store | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """Build the app; collaborators not passed in are made from `settings`."""
    settings = settings or get_settings()
    preset_book(settings.presets_file)  # a presets file that does not validate stops the start here

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = redis or connect_redis(settings.redis_url)
        app.state.settings = settings
        app.state.queue = JobQueue(connection, settings)
        app.state.store = store or make_store(settings)
        app.state.registry = registry or ModelRegistry(settings.models_yaml, settings.default_model)
        app.state.engine_probe = engines.EngineProbe()
        app.state.gallery = GalleryIndex(connection, settings.queue_prefix)
        app.state.upload_owners = UploadOwners(connection, settings.queue_prefix)
        app.state.ownership = Ownership(app.state.gallery, app.state.upload_owners, app.state.store, settings)
        app.state.quotas = QuotaLedger(connection, settings.queue_prefix)
        app.state.idempotency = IdempotencyStore(connection, settings.queue_prefix)
        app.state.audit = AuditLog(connection, settings)
        rebuild = threading.Thread(
            target=rebuild_gallery_if_empty,
            args=(app.state.gallery, app.state.store, settings, app.state.ownership),
            daemon=True,
        )
        rebuild.start()
        app.state.gallery_rebuild = rebuild  # tests that write the index directly wait for it
        stop_janitor = threading.Event()
        janitor = threading.Thread(
            target=run_janitor, args=(app.state.queue, app.state.store, settings, stop_janitor), daemon=True
        )
        janitor.start()
        yield
        stop_janitor.set()
        janitor.join(timeout=REBUILD_JOIN_S)
        rebuild.join(timeout=REBUILD_JOIN_S)
        if redis is None:
            connection.close()

    app = FastAPI(title="KITTY images-service", version=__version__, lifespan=lifespan)
    app.state.keyring = KeyRing.parse(settings.api_keys, settings.default_tier)
    # Added innermost first: request id (outermost of these, so refusals carry it too), then the
    # API key check, then the size limits, so an unauthenticated caller learns nothing about bodies.
    app.add_middleware(RequestLimitsMiddleware)
    app.add_middleware(ApiKeyMiddleware, keyring=app.state.keyring, trust_on_behalf=True)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: refusals are observed too
    handlers.install_error_handlers(app)
    app.include_router(images.router)
    app.include_router(upscale.router)
    app.include_router(painter.router)
    app.include_router(uploads.router)
    app.include_router(engines.router)
    app.include_router(health.router)
    app.include_router(audit_api.router)
    app.include_router(collections_api.router)

    return app


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="images-service", description="Run the KITTY images-service API.")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    configure_logging(settings.log_level)
    app = create_app(settings)
    warn_if_exposed_without_keys(log, args.host, app.state.keyring, "IMAGES_API_KEYS")
    try:
        serve_http(app, args.host, args.port)
    except PortUnavailable as exc:  # one line, not a traceback: the operator only has to move the port
        sys.exit(f"images-service: {exc.explain('IMAGES_PORT (or --port)')}")

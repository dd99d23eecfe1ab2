"""Uploads are inputs, not results: kept `IMAGES_UPLOADS_TTL_DAYS` (7 by default), then deleted by
the images-service's janitor, so a service that takes img2img requests does not grow without bound.
Generated images are never touched here. A re-run of an image whose input has gone answers 404
KEY_NOT_FOUND saying to upload it again."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from prometheus_client import Counter

from .settings import Settings
from .storage import Store

log = logging.getLogger("kitty.images.retention")

UPLOADS_DELETED = Counter("images_uploads_deleted_total", "Uploads deleted after IMAGES_UPLOADS_TTL_DAYS.")


def sweep_uploads(store: Store, settings: Settings, now: datetime) -> int:
    """Delete the uploads last written before ``now - IMAGES_UPLOADS_TTL_DAYS``; how many went.
    A TTL of 0 keeps them forever."""
    if not settings.uploads_ttl_days:
        return 0
    cutoff = now - timedelta(days=settings.uploads_ttl_days)
    # Listed first, deleted after: a store is not changed under its own listing.
    expired = [info.key for info in store.objects(settings.uploads_prefix) if info.last_modified < cutoff]
    for key in expired:
        store.delete(key)
    if expired:
        UPLOADS_DELETED.inc(len(expired))
        log.info("expired uploads deleted", extra={"count": len(expired), "older_than": cutoff.isoformat()})
    return len(expired)

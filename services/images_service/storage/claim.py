"""One filesystem store per deployment: a folder on one host cannot be shared by workers on others.

Images stored by a worker on host B in its own folder would be missing for the API on host A (the
gallery would list keys nobody can read), so a worker with the filesystem store claims it in Redis
as ``host:folder``, and a worker whose store is another folder, or the same path on another host,
refuses to start with what to do instead (S3 for a fleet). The claim lasts `CLAIM_TTL_S` and each
worker renews it with its card, so a deployment moved to a new folder is free to start once every
worker of the old one has been stopped that long. S3 stores claim nothing: any number of hosts share
a bucket.
"""

from __future__ import annotations

import socket

from redis import Redis

from ..settings import Settings
from .base import Store
from .fs import FilesystemStore

CLAIM_KEY = "{prefix}:filesystem-store"
CLAIM_TTL_S = 60


class StoreShared(RuntimeError):
    """Another host or folder holds this deployment's filesystem store."""


def where(store: FilesystemStore) -> str:
    return f"{socket.gethostname()}:{store.root}"


def claim_store(redis: Redis, settings: Settings, store: Store) -> None:
    """Claim (or renew the claim of) the filesystem store for this host and folder; `StoreShared`
    naming both and what to do when another holds it. Nothing for other stores."""
    if not isinstance(store, FilesystemStore):
        return
    key, mine = CLAIM_KEY.format(prefix=settings.queue_prefix), where(store)
    if redis.set(key, mine, nx=True, ex=CLAIM_TTL_S):
        return
    held = redis.get(key)
    theirs = held.decode() if isinstance(held, bytes) else str(held)
    if held is None or theirs == mine:
        redis.set(key, mine, ex=CLAIM_TTL_S)
        return
    raise StoreShared(
        f"this deployment's images are stored in the folder {theirs} (the filesystem store), and this "
        f"worker's is {mine}: a folder cannot be shared across hosts. For workers on several hosts "
        "use S3 or MinIO (S3_BUCKET, S3_ENDPOINT_URL); on this host, set IMAGES_DATA_DIR to that "
        f"folder's data dir. (The claim expires {CLAIM_TTL_S} s after the last worker using it stops.)"
    )

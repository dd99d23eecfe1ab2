"""Who may see what: every job, image, sidecar and upload records the key id that made it, and a key
sees, selects, re-runs, cancels and deletes only its own; an admin key sees all. With no keys
configured (the local default) there is one owner, nobody, and everything is visible as before.

What another key owns answers exactly as what does not exist (404 with the same message), so one
tenant cannot learn that another's job id or image key is real.

Where the owner is recorded: a job's RQ meta (``key_id``, written at enqueue); an image's JSON
sidecar and gallery entry (``owner``, written by the worker from the job's meta); an upload's entry
in the ``<prefix>:uploads:owner`` hash (written when it is stored; uploads have no sidecar).
"""

from __future__ import annotations

import json

from redis import Redis

from services.common.api_keys import ApiKey, can_see
from services.contracts import RenderSpec

from .errors import KeyNotFound, KittyError
from .gallery import GalleryIndex
from .queue import redis_errors
from .settings import Settings
from .storage import Store
from .storage.keys import meta_key_for
from .uploads import missing_input

UPLOAD_OWNERS_KEY = "{prefix}:uploads:owner"


def owner_of(caller: ApiKey | None) -> str | None:
    """The owner id a caller's new jobs and uploads get: its key id; None when keys are off."""
    return caller.key_id if caller is not None else None


def listing_owner(caller: ApiKey | None, everyone: bool = False) -> str | None:
    """Whose images a listing shows: None (all) without keys or for an admin who asks for everyone;
    otherwise the caller's own."""
    if caller is None or (caller.is_admin and everyone):
        return None
    return caller.key_id


class UploadOwners:
    """The key id that stored each upload (uploads have no sidecar to hold it)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = UPLOAD_OWNERS_KEY.format(prefix=prefix)

    def record(self, upload_key: str, owner: str | None) -> None:
        if owner is None:
            return
        with redis_errors():
            self.redis.hset(self.key, upload_key, owner)

    def get(self, upload_key: str) -> str | None:
        with redis_errors():
            raw = self.redis.hget(self.key, upload_key)
        return raw.decode() if isinstance(raw, bytes) else raw

    def forget(self, upload_key: str) -> None:
        with redis_errors():
            self.redis.hdel(self.key, upload_key)


class Ownership:
    """Looks up the owner of a job, an image or an upload, and refuses what a caller may not see
    with the same 404 an unknown id or key gets."""

    def __init__(
        self, gallery: GalleryIndex, uploads: UploadOwners, store: Store, settings: Settings
    ) -> None:
        self.gallery, self.uploads, self.store, self.settings = gallery, uploads, store, settings

    def image_owner(self, key: str) -> str | None:
        """From the gallery entry; an image not (yet) indexed from its sidecar."""
        item = self.gallery.get(key)
        if item is not None:
            return item.owner
        try:
            sidecar = json.loads(self.store.get(meta_key_for(key)))
        except (KittyError, ValueError):
            return None
        owner = sidecar.get("owner") if isinstance(sidecar, dict) else None
        return owner if isinstance(owner, str) else None

    def input_owner(self, key: str) -> str | None:
        if key.startswith(self.settings.uploads_prefix):
            return self.uploads.get(key)
        return self.image_owner(key)

    def require_image(self, caller: ApiKey | None, key: str) -> None:
        if caller is not None and not can_see(caller, self.image_owner(key)):
            raise KeyNotFound(f"no image with key '{key}'")

    def require_input(self, caller: ApiKey | None, key: str, field: str) -> None:
        if caller is not None and not can_see(caller, self.input_owner(key)):
            raise missing_input(key, field)

    def require_inputs(self, caller: ApiKey | None, spec: RenderSpec) -> None:
        """A job may read only pictures its caller could select: its own uploads and images."""
        if spec.image is not None:
            self.require_input(caller, spec.image, "image")
        if spec.mask is not None:
            self.require_input(caller, spec.mask, "mask")
        for index, control in enumerate(spec.controls):
            self.require_input(caller, control.image, f"controls[{index}].image")
        if spec.reference_image is not None:
            self.require_input(caller, spec.reference_image, "reference_image")

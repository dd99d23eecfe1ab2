"""The gallery index: every stored image, newest first, in Redis, so `latest` costs O(log n + limit)
instead of listing the whole bucket (S3 lists in name order only, 1,000 keys a call).

Storage stays the source of truth: the worker adds an entry after the PNG and sidecar are stored,
and `rebuild` recreates the index from the bucket (`kitty-images reindex`, or on start when empty).

Layout: one sorted set whose members are ``<created_at µs, 16 digits>|<key>`` with score 0, so
ZREVRANGEBYLEX walks them newest first and a member is an exact, tie-free cursor; one hash maps each
key to its item's JSON. Each owner (the key id that made an image) has a sorted set of its own,
same members, so a key's own images page as fast as all of them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from services.contracts import LatestItem

from .queue import redis_errors
from .storage import Store
from .storage.keys import meta_key_for

log = logging.getLogger("kitty.images.gallery")

ORDER_KEY = "{prefix}:gallery:order"
ITEMS_KEY = "{prefix}:gallery:items"
OWNER_ORDER_KEY = "{prefix}:gallery:order:{owner}"

STAMP_DIGITS = 16
"""Microseconds since the epoch fit in 16 digits until the year 2286; fixed width sorts as numbers."""

REBUILD_BATCH = 500
"""Entries written per Redis round trip while rebuilding."""

THUMB_SUFFIX = ".thumb.webp"


def thumb_key_for(png_key: str) -> str:
    return png_key.removesuffix(".png") + THUMB_SUFFIX


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def _key_of(member: bytes | str) -> str:
    return _text(member).split("|", 1)[1]


def _stamp(moment: datetime) -> str:
    return f"{int(moment.timestamp() * 1_000_000):0{STAMP_DIGITS}d}"


def item_from_sidecar(sidecar: dict[str, Any], *, size: int, last_modified: datetime) -> LatestItem:
    request = sidecar.get("request") or {}
    png_key = sidecar["png_key"]
    return LatestItem(
        key=png_key,
        size=size,
        last_modified=last_modified.isoformat(),
        meta_key=sidecar.get("meta_key") or meta_key_for(png_key),
        thumb_key=sidecar.get("thumb_key"),
        prompt=request.get("prompt"),
        negative_prompt=request.get("negative_prompt"),
        model=sidecar.get("model"),
        engine=sidecar.get("engine"),
        seed=sidecar.get("seed"),
        width=sidecar.get("width"),
        height=sidecar.get("height"),
        steps=request.get("steps"),
        cfg=request.get("cfg"),
        scheduler=request.get("scheduler"),
        refiner=request.get("refiner"),
        preset=request.get("preset"),
        quality=request.get("quality"),
        job_id=sidecar.get("job_id"),
        owner=sidecar.get("owner"),
    )


class GalleryIndex:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.order_key = ORDER_KEY.format(prefix=prefix)
        self.items_key = ITEMS_KEY.format(prefix=prefix)

    def owner_order_key(self, owner: str) -> str:
        return OWNER_ORDER_KEY.format(prefix=self.prefix, owner=owner)

    def _order_keys(self, item: LatestItem) -> list[str]:
        return [self.order_key, *([self.owner_order_key(item.owner)] if item.owner else [])]

    def _write(self, pipe: Any, item: LatestItem) -> None:
        member = f"{_stamp(datetime.fromisoformat(item.last_modified))}|{item.key}"
        for order_key in self._order_keys(item):
            pipe.zadd(order_key, {member: 0})
        pipe.hset(self.items_key, item.key, item.model_dump_json(exclude={"thumb_url"}))

    def add(self, item: LatestItem) -> None:
        with redis_errors(), self.redis.pipeline() as pipe:
            self._write(pipe, item)
            pipe.execute()

    def remove(self, key: str) -> None:
        raw = self.redis.hget(self.items_key, key)
        with redis_errors(), self.redis.pipeline() as pipe:
            if raw:
                item = LatestItem.model_validate_json(raw)
                member = f"{_stamp(datetime.fromisoformat(item.last_modified))}|{key}"
                for order_key in self._order_keys(item):
                    pipe.zrem(order_key, member)
            pipe.hdel(self.items_key, key)
            pipe.execute()

    def get(self, key: str) -> LatestItem | None:
        with redis_errors():
            raw = self.redis.hget(self.items_key, key)
        return LatestItem.model_validate_json(raw) if raw else None

    def count(self) -> int:
        with redis_errors():
            return int(self.redis.zcard(self.order_key))

    def page(
        self, limit: int, cursor: str | None = None, *, owner: str | None = None
    ) -> tuple[list[LatestItem], str | None]:
        """The `limit` newest items older than `cursor` (of `owner` only, when given), and the
        cursor of the page after them."""
        upper = f"({cursor}" if cursor else "+"
        order_key = self.order_key if owner is None else self.owner_order_key(owner)
        with redis_errors():
            members = self.redis.zrevrangebylex(order_key, upper, "-", start=0, num=limit + 1)
            keys = [_key_of(m) for m in members[:limit]]
            raws = self.redis.hmget(self.items_key, keys) if keys else []
        items = [LatestItem.model_validate_json(raw) for raw in raws if raw]
        next_cursor = _text(members[limit - 1]) if len(members) > limit else None
        return items, next_cursor

    def rebuild(self, store: Store, prefix: str) -> int:
        """Make the index match what the store holds; returns the number of images indexed.

        Entries are merged into the live index rather than swapped in, so an image a worker adds
        meanwhile is never lost; entries of images gone from the store are dropped, except ones
        newer than the listing (added while it ran).
        """
        listing_started = _stamp(datetime.now(UTC))
        objects = store.list_latest(prefix, limit=2**31, suffix=".png")
        listed = {obj.key for obj in objects}
        with redis_errors():
            for start in range(0, len(objects), REBUILD_BATCH):
                with self.redis.pipeline() as pipe:
                    for obj in objects[start : start + REBUILD_BATCH]:
                        self._write(pipe, self._item_for(store, obj.key, obj.size, obj.last_modified))
                    pipe.execute()
            older = self.redis.zrangebylex(self.order_key, "-", f"({listing_started}")
            stale = [m for m in older if _key_of(m) not in listed]
            for member in stale:
                self.remove(_key_of(member))
                self.redis.zrem(self.order_key, member)  # a member whose item was already gone
        log.info("gallery index rebuilt", extra={"images": len(objects), "dropped": len(stale)})
        return len(objects)

    @staticmethod
    def _item_for(store: Store, key: str, size: int, last_modified: datetime) -> LatestItem:
        """From the sidecar when it can be read; a PNG without one is still listed."""
        try:
            sidecar = json.loads(store.get(meta_key_for(key)))
            sidecar.setdefault("png_key", key)
            if sidecar.get("created_at"):
                last_modified = datetime.fromisoformat(sidecar["created_at"])
            return item_from_sidecar(sidecar, size=size, last_modified=last_modified)
        except Exception:  # a missing or foreign sidecar must not stop a rebuild
            log.warning("image without a readable sidecar", extra={"key": key})
            return LatestItem(key=key, size=size, last_modified=last_modified.astimezone(UTC).isoformat())

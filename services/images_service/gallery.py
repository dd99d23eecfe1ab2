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
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from redis import Redis

from services.contracts import LatestItem

from .errors import ValidationFailed
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

SEARCH_CHUNK = 200
"""Index entries read per Redis round trip while a filtered page is gathered."""

SEARCH_SCAN_BUDGET = 2_000
"""Index entries one filtered page may examine. A page stops here even when it holds fewer than
`limit` matches (possibly none) and answers a `next_cursor` to go on from: a rare match in a large
gallery costs several requests, never one unbounded one. 2,000 entries are about 1.4 MB of item JSON."""


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
        member = member_for(item)
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
                member = member_for(item)
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

    def search(
        self,
        query: GalleryQuery,
        limit: int,
        cursor: str | None = None,
        *,
        source: str | None = None,
        also_in: tuple[str, ...] = (),
        oldest_first: bool = False,
        scan_budget: int = SEARCH_SCAN_BUDGET,
    ) -> tuple[list[LatestItem], str | None]:
        """Up to `limit` items matching `query`, walking `source` (an order set: the gallery's, an
        owner's, a board's) from `cursor`, keeping only members also in every sorted set of `also_in`.
        At most `scan_budget` entries are examined; the cursor answered continues the walk (the same
        `oldest_first` must be passed with it). A page may hold fewer than `limit` items and still have
        a next cursor."""
        if source is None:
            source = self.order_key if query.owner is None else self.owner_order_key(query.owner)
        found: list[LatestItem] = []
        position, scanned = cursor, 0
        with redis_errors():
            while scanned < scan_budget:
                count = min(SEARCH_CHUNK, scan_budget - scanned)
                members = _scan_members(self.redis, source, position, query.lex_range(), count, oldest_first)
                if not members:
                    return found, None
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(self.items_key, [_key_of(m) for m in members])
                    for other in also_in:
                        pipe.zmscore(other, [_text(m) for m in members])
                    raws, *memberships = pipe.execute()
                for offset, (member, raw) in enumerate(zip(members, raws, strict=True)):
                    position, scanned = _text(member), scanned + 1
                    if not raw or any(scores[offset] is None for scores in memberships):
                        continue
                    item = LatestItem.model_validate_json(raw)
                    if query.matches(item):
                        found.append(item)
                        if len(found) == limit:
                            is_last = offset == len(members) - 1 and len(members) < count
                            return found, None if is_last else position
                if len(members) < count:
                    return found, None
        return found, position

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


# --- finding images: filters over the index, with a bounded scan per page -------------------------
def member_for(item: LatestItem) -> str:
    """The item's member of the order sets (and of favourites and boards): ``<stamp>|<key>``."""
    return f"{_stamp(datetime.fromisoformat(item.last_modified))}|{item.key}"


@dataclass(frozen=True)
class GalleryQuery:
    """What a filtered listing keeps: every criterion given must hold (prompt text is a
    case-insensitive substring; size is exact, min_* a lower bound; since/until bound the creation
    time, since inclusive, until exclusive)."""

    text: str | None = None
    model: str | None = None
    engine: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    width: int | None = None
    height: int | None = None
    min_width: int | None = None
    min_height: int | None = None
    job_id: str | None = None
    owner: str | None = None

    def matches(self, item: LatestItem) -> bool:
        if self.owner is not None and item.owner != self.owner:
            return False
        if self.text is not None and self.text.casefold() not in (item.prompt or "").casefold():
            return False
        exact = ((self.model, item.model), (self.engine, item.engine), (self.job_id, item.job_id))
        if any(wanted is not None and actual != wanted for wanted, actual in exact):
            return False
        if (self.width is not None and item.width != self.width) or (
            self.height is not None and item.height != self.height
        ):
            return False
        if self.min_width is not None and (item.width or 0) < self.min_width:
            return False
        return self.min_height is None or (item.height or 0) >= self.min_height

    def lex_range(self) -> tuple[str, str]:
        """The (min, max) ZRANGEBYLEX bounds the creation-time criteria allow."""
        low = f"[{_stamp(self.since)}" if self.since else "-"
        high = f"({_stamp(self.until)}" if self.until else "+"
        return low, high


def parse_moment(value: str, field: str, *, is_end: bool = False) -> datetime:
    """An ISO date or date-time from a query; a bare date as an `until` means the end of that day.
    Times without a zone are UTC."""
    try:
        if len(value) == len("YYYY-MM-DD"):
            moment = datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
            return moment + timedelta(days=1) if is_end else moment
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(
            f"'{field}' must be an ISO date or date-time, like 2025-01-31 or 2025-01-31T18:00:00Z",
            detail={"field": field, "value": value[:64]},
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _scan_members(
    redis: Redis, source: str, position: str | None, bounds: tuple[str, str], count: int, oldest_first: bool
) -> list[bytes | str]:
    low, high = bounds
    if oldest_first:
        return redis.zrangebylex(source, f"({position}" if position else low, high, start=0, num=count)
    return redis.zrevrangebylex(source, high if position is None else f"({position}", low, start=0, num=count)

"""The gallery index: every stored image, newest first, in Redis, so `latest` costs O(log n + limit)
instead of listing the whole bucket (S3 lists in name order only, 1,000 keys a call).

Storage stays the source of truth: the worker adds an entry after the PNG and sidecar are stored,
and `rebuild` recreates the index from the bucket (`kitty-images reindex`, or on start when empty).

Layout — one sorted set, one member an image (274 bytes each at a million in `make bench`):

- ``{prefix}:gallery:index`` holds ``<token>|<compact item>`` with score 0. The *token* is the
  image's creation time in microseconds (16 digits, so members sort by time) followed by its id: the
  8 hex digits of a key named by `new_image_key` (``…/20250101_120000_ab12cd34.png``), or ``~`` and a
  hash of any other key. ZREVRANGEBYLEX walks the gallery newest first, and a token is an exact,
  tie-free cursor. The compact item is a JSON array of the card's fields in `FIELDS` order, trailing
  nulls dropped, the key written as its folder only when the token says the rest.
- A key names its own second (the worker makes the key and the creation time from one clock
  reading), so `get` finds an image by a ZRANGEBYLEX over that second. The few images whose key does
  not (foreign PNGs found by a rebuild, test fixtures) have their token in ``{prefix}:gallery:aliases``.
- Each owner (the key id that made an image) has a sorted set of tokens,
  ``{prefix}:gallery:owner:{owner}``, so a key's own images page as fast as all of them; favourites
  and boards (collections.py) hold tokens too.

The first layout (an order set of ``<stamp>|<key>`` and a hash of item JSON, 726 bytes an image) is
left behind by the new key names: the start-up "rebuild when empty" fills the new index from storage,
then `drop_legacy` deletes the old keys and `Collections.migrate_legacy` rewrites old favourites.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from redis import Redis

from services.contracts import LatestItem

from .errors import ValidationFailed
from .queue import redis_errors
from .storage import Store
from .storage.keys import KEY_TIME_FORMAT, meta_key_for

log = logging.getLogger("kitty.images.gallery")

INDEX_KEY = "{prefix}:gallery:index"
ALIASES_KEY = "{prefix}:gallery:aliases"
OWNER_KEY = "{prefix}:gallery:owner:{owner}"
LEGACY_KEYS = ("{prefix}:gallery:order", "{prefix}:gallery:items")
LEGACY_OWNER_PATTERN = "{prefix}:gallery:order:*"

STAMP_DIGITS = 16
"""Microseconds since the epoch fit in 16 digits until the year 2286; fixed width sorts as numbers."""

TOKEN_PATTERN = r"\d{16}(?:[0-9a-f]{8}|~[0-9a-f]{8})"
"""A token, which is also the gallery's cursor."""

FIELDS = (
    "key", "size", "thumb_key", "prompt", "negative_prompt", "model", "engine", "seed", "width",
    "height", "steps", "cfg", "scheduler", "refiner", "preset", "quality", "job_id", "owner", "meta_key",
)  # fmt: skip
"""The compact item's positions. `last_modified` is the token's time; `key` is the key's folder when
the token says the rest (else the whole key); `thumb_key` and `meta_key` are 1 and null when they are
the key's own (`thumb_key_for`, `meta_key_for`), 0 or null for none, else spelled out."""

REBUILD_BATCH = 500
"""Entries written per Redis round trip while rebuilding."""

SCAN_CHUNK = 10_000
"""Index entries read per round trip while a rebuild looks for images gone from storage."""

SEARCH_CHUNK = 200
"""Index entries read per Redis round trip while a filtered page is gathered."""

SEARCH_SCAN_BUDGET = 2_000
"""Index entries one filtered page may examine. A page stops here even when it holds fewer than
`limit` matches (possibly none) and answers a `next_cursor` to go on from: a rare match in a large
gallery costs several requests, never one unbounded one. 2,000 entries are about 400 KB."""

THUMB_SUFFIX = ".thumb.webp"

_MADE_KEY = re.compile(r"(?P<folder>.*?)(?P<time>\d{8}_\d{6})_(?P<id>[0-9a-f]{8})\.png")
"""A key `new_image_key` made: its folder, its UTC second, its id."""


def thumb_key_for(png_key: str) -> str:
    return png_key.removesuffix(".png") + THUMB_SUFFIX


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def _stamp(moment: datetime) -> str:
    """`moment` (UTC when naive) as 16 digits of microseconds since the epoch, exactly."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"{(aware - EPOCH) // MICROSECOND:0{STAMP_DIGITS}d}"


def _moment(stamp: str) -> datetime:
    return EPOCH + int(stamp) * MICROSECOND


def _hash_id(key: str) -> str:
    return "~" + hashlib.blake2b(key.encode(), digest_size=4).hexdigest()


def ids_of(key: str) -> tuple[str, ...]:
    """The token id parts `key` may have: a made key's own 8 hex digits (when its time is the
    image's), or ``~`` and 8 hex digits of its hash (any key whose token cannot say it)."""
    made = _MADE_KEY.fullmatch(key)
    return (made["id"], _hash_id(key)) if made else (_hash_id(key),)


def token_for(item: LatestItem) -> str:
    """The item's place in the index (and its member in owner sets, favourites and boards): its
    creation time to the microsecond, then an id. Unique as long as no two images of the same
    microsecond share 32 random bits of id."""
    stamp = _stamp(datetime.fromisoformat(item.last_modified))
    return stamp + (_MADE_KEY.fullmatch(item.key)["id"] if _told_by(stamp, item.key) else _hash_id(item.key))  # type: ignore[index]


def _told_by(stamp: str, key: str) -> bool:
    """Whether a token of `stamp` with the key's own id, and the key's folder, say the whole key (so
    no alias is needed): a key `new_image_key` made at the image's creation time."""
    made = _MADE_KEY.fullmatch(key)
    return bool(
        made
        and not made["folder"].endswith(".png")
        and made["time"] == _moment(stamp[:STAMP_DIGITS]).strftime(KEY_TIME_FORMAT)
    )


def _entry_range(token: str) -> tuple[str, str]:
    """ZRANGEBYLEX bounds of the index member of `token` (``|`` < ``}``)."""
    return f"[{token}|", f"({token}}}"


def _second_range(key: str) -> tuple[str, str] | None:
    """ZRANGEBYLEX bounds of the index members made in the second a made key names."""
    made = _MADE_KEY.fullmatch(key)
    try:
        second = datetime.strptime(made["time"], KEY_TIME_FORMAT).replace(tzinfo=UTC) if made else None
    except ValueError:  # shaped like a made key, but no real time (second 61…): found by its alias
        second = None
    if second is None:
        return None
    return f"[{_stamp(second)}", f"({_stamp(second + timedelta(seconds=1))}"


def encode(item: LatestItem) -> str:
    """The item's index member: ``<token>|<compact item>``."""
    token = token_for(item)
    key = item.key
    own_thumb, own_meta = thumb_key_for(key), meta_key_for(key)
    values: dict[str, Any] = item.model_dump(include=set(FIELDS))
    values["key"] = _MADE_KEY.fullmatch(key)["folder"] if _told_by(token, key) else key  # type: ignore[index]
    values["thumb_key"] = 1 if item.thumb_key == own_thumb else item.thumb_key
    values["meta_key"] = None if item.meta_key == own_meta else (item.meta_key or 0)
    if item.cfg is not None and item.cfg == int(item.cfg):
        values["cfg"] = int(item.cfg)
    if item.refiner is not None:
        values["refiner"] = int(item.refiner)
    row = [values[name] for name in FIELDS]
    while row and row[-1] is None:
        row.pop()
    return f"{token}|{json.dumps(row, separators=(',', ':'), ensure_ascii=False)}"


def decode(member: bytes | str) -> LatestItem:
    token, _, body = _text(member).partition("|")
    row = json.loads(body)
    values = dict(zip(FIELDS, row + [None] * (len(FIELDS) - len(row)), strict=True))
    stamp = token[:STAMP_DIGITS]
    made = _moment(stamp)
    spelled: str = values["key"]
    key = (
        spelled
        if spelled.endswith(".png")
        else f"{spelled}{made.strftime(KEY_TIME_FORMAT)}_{token[STAMP_DIGITS:]}.png"
    )
    values.update(
        key=key,
        last_modified=made.isoformat(),
        thumb_key=thumb_key_for(key) if values["thumb_key"] == 1 else values["thumb_key"],
        meta_key=meta_key_for(key) if values["meta_key"] is None else values["meta_key"] or None,
    )
    return LatestItem.model_validate(values)


def _token_of(member: bytes | str) -> str:
    return _text(member).partition("|")[0]


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
        self.index_key = INDEX_KEY.format(prefix=prefix)
        self.aliases_key = ALIASES_KEY.format(prefix=prefix)

    def owner_key(self, owner: str) -> str:
        return OWNER_KEY.format(prefix=self.prefix, owner=owner)

    # --- writing ----------------------------------------------------------------------------------
    def write_to(self, pipe: Any, item: LatestItem) -> None:
        """Queue the commands that put `item` in the index on `pipe`, replacing its entry of the
        same time (what a rebuild writes again)."""
        member = encode(item)
        token = _token_of(member)
        pipe.zremrangebylex(self.index_key, *_entry_range(token))
        pipe.zadd(self.index_key, {member: 0})
        if item.owner:
            pipe.zadd(self.owner_key(item.owner), {token: 0})
        if not _told_by(token, item.key):
            pipe.hset(self.aliases_key, item.key, token)

    def add(self, item: LatestItem) -> None:
        """Index `item`; an entry of the same key at another time (a rebuilt sidecar's) is replaced."""
        token = token_for(item)
        stale = [m for m in self._entries(item.key) if _token_of(m) != token]
        with redis_errors(), self.redis.pipeline() as pipe:
            self._unwrite(pipe, stale)
            self.write_to(pipe, item)
            pipe.execute()

    def remove(self, key: str) -> None:
        entries = self._entries(key)
        with redis_errors(), self.redis.pipeline() as pipe:
            self._unwrite(pipe, entries)
            pipe.hdel(self.aliases_key, key)
            pipe.execute()

    def _unwrite(self, pipe: Any, members: list[bytes | str]) -> None:
        for member in members:
            pipe.zrem(self.index_key, member)
            owner = decode(member).owner
            if owner:
                pipe.zrem(self.owner_key(owner), _token_of(member))

    # --- reading ----------------------------------------------------------------------------------
    def _entries(self, key: str) -> list[bytes | str]:
        """The index members of `key` (one, or none; two only while a re-timed entry is replaced):
        found in the second the key names, or through its alias."""
        second = _second_range(key)
        wanted = ids_of(key)[0]
        with redis_errors():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(self.aliases_key, key)
                if second:
                    pipe.zrangebylex(self.index_key, *second)
                alias, *in_second = pipe.execute()
            candidates = [m for m in (in_second[0] if in_second else []) if _token_of(m).endswith(wanted)]
            if alias:
                candidates += self.redis.zrangebylex(self.index_key, *_entry_range(_text(alias)))
        found = {_text(m): m for m in candidates if decode(m).key == key}
        return list(found.values())

    def get(self, key: str) -> LatestItem | None:
        entries = self._entries(key)
        return decode(entries[0]) if entries else None

    def items_of(self, tokens: Sequence[bytes | str]) -> list[LatestItem | None]:
        """The item of each token (None for one no longer indexed), in one round trip."""
        if not tokens:
            return []
        with redis_errors(), self.redis.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.zrangebylex(self.index_key, *_entry_range(_text(token)), start=0, num=1)
            found = pipe.execute()
        return [decode(members[0]) if members else None for members in found]

    def count(self) -> int:
        with redis_errors():
            return int(self.redis.zcard(self.index_key))

    def page(
        self, limit: int, cursor: str | None = None, *, owner: str | None = None
    ) -> tuple[list[LatestItem], str | None]:
        """The `limit` newest items older than `cursor` (of `owner` only, when given), and the
        cursor of the page after them."""
        source = self.index_key if owner is None else self.owner_key(owner)
        with redis_errors():
            members = self.redis.zrevrangebylex(source, _after(cursor, False), "-", start=0, num=limit + 1)
        shown = members[:limit]
        if owner is None:
            items = [decode(m) for m in shown]
        else:
            items = [item for item in self.items_of(shown) if item is not None]
        next_cursor = _token_of(members[limit - 1]) if len(members) > limit else None
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
        """Up to `limit` items matching `query`, walking `source` (the index, or a set of tokens: an
        owner's, a board's, the favourites) from `cursor`, keeping only images also in every token
        set of `also_in`. At most `scan_budget` entries are examined; the cursor answered continues
        the walk (the same `oldest_first` must be passed with it). A page may hold fewer than `limit`
        items and still have a next cursor."""
        if source is None:
            source = self.index_key if query.owner is None else self.owner_key(query.owner)
        found: list[LatestItem] = []
        position, scanned = cursor, 0
        with redis_errors():
            while scanned < scan_budget:
                count = min(SEARCH_CHUNK, scan_budget - scanned)
                members = _scan_members(self.redis, source, position, query.lex_range(), count, oldest_first)
                if not members:
                    return found, None
                tokens = [_token_of(m) for m in members]
                with self.redis.pipeline(transaction=False) as pipe:
                    for other in also_in:
                        pipe.zmscore(other, tokens)
                    memberships = pipe.execute() if also_in else []
                if source == self.index_key:
                    items: list[LatestItem | None] = [decode(m) for m in members]
                else:
                    items = self.items_of(tokens)
                for offset, (token, item) in enumerate(zip(tokens, items, strict=True)):
                    position, scanned = token, scanned + 1
                    if item is None or any(scores[offset] is None for scores in memberships):
                        continue
                    if query.matches(item):
                        found.append(item)
                        if len(found) == limit:
                            is_last = offset == len(members) - 1 and len(members) < count
                            return found, None if is_last else position
                if len(members) < count:
                    return found, None
        return found, position

    # --- rebuilding -------------------------------------------------------------------------------
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
                        self.write_to(pipe, self._item_for(store, obj.key, obj.size, obj.last_modified))
                    pipe.execute()
            stale = [m for m in self._older_than(listing_started) if decode(m).key not in listed]
            for start in range(0, len(stale), REBUILD_BATCH):
                with self.redis.pipeline() as pipe:
                    batch = stale[start : start + REBUILD_BATCH]
                    self._unwrite(pipe, batch)
                    pipe.hdel(self.aliases_key, *[decode(m).key for m in batch])
                    pipe.execute()
        log.info("gallery index rebuilt", extra={"images": len(objects), "dropped": len(stale)})
        return len(objects)

    def _older_than(self, stamp: str) -> Iterator[bytes | str]:
        """Every index member made before `stamp`, oldest first, `SCAN_CHUNK` a round trip."""
        position = "-"
        while True:
            members = self.redis.zrangebylex(self.index_key, position, f"({stamp}", start=0, num=SCAN_CHUNK)
            yield from members
            if len(members) < SCAN_CHUNK:
                return
            position = _after(_token_of(members[-1]), True)

    def drop_legacy(self) -> int:
        """Delete the first layout's keys (an order set, an items hash, owner order sets); returns how
        many there were. Run once the new index is filled."""
        with redis_errors():
            legacy = [name.format(prefix=self.prefix) for name in LEGACY_KEYS]
            legacy += [_text(k) for k in self.redis.scan_iter(match=_glob(self.prefix) + ":gallery:order:*")]
            dropped = int(self.redis.delete(*legacy)) if legacy else 0
        if dropped:
            log.info("old gallery index layout dropped", extra={"keys": dropped})
        return dropped

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


def _after(token: str | None, oldest_first: bool) -> str:
    """The ZRANGEBYLEX bound just past `token` in the walk's direction, in the index and in token
    sets alike (no token is a prefix of another, and ``|`` < ``}``)."""
    if token is None:
        return "-" if oldest_first else "+"
    return f"({token}}}" if oldest_first else f"({token}"


def _glob(text: str) -> str:
    """`text` matched literally by a Redis glob (MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# --- finding images: filters over the index, with a bounded scan per page -------------------------
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
        return redis.zrangebylex(
            source, low if position is None else _after(position, True), high, start=0, num=count
        )
    return redis.zrevrangebylex(
        source, high if position is None else _after(position, False), low, start=0, num=count
    )

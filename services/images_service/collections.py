"""Favourites and boards (named collections) of images, kept per caller in Redis: each API key has
its own, invisible to every other key; without keys there is one shared namespace.

Layout: favourites and each board are sorted sets of the gallery's tokens (an image's time and id,
score 0), so a board pages newest first exactly as the gallery does and a filtered listing can walk
it instead of the whole index; a set per owner names its boards. An image deleted later simply stops
being listed (its entry is gone from the index), so nothing has to be cleaned up at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from redis import Redis

from services.common.api_keys import ApiKey
from services.contracts import ErrorCode, LatestItem

from .errors import KeyNotFound, KittyError, ValidationFailed
from .gallery import GalleryIndex, GalleryQuery, ids_of, token_for
from .ownership import Ownership
from .queue import redis_errors

FAVOURITES_KEY = "{prefix}:fav:{owner}"
BOARD_NAMES_KEY = "{prefix}:boards:{owner}"
BOARD_KEY = "{prefix}:board:{owner}:{name}"

SHARED_OWNER = "shared"
"""The namespace of a deployment without API keys (a key id is 12 hex digits, never this)."""

MAX_BOARDS = 100
"""Boards one key may have: a menu longer than this is no longer a way to find things."""

MAX_BOARD_ITEMS = 10_000
"""Images one board may hold; a filtered listing of a board walks at most this many entries."""

MAX_FAVOURITES = 10_000
"""Images one key may star."""

MAX_BOARD_NAME_CHARS = 64

BOARD_NAME = re.compile(rf"[A-Za-z0-9](?:[A-Za-z0-9 _.-]{{0,{MAX_BOARD_NAME_CHARS - 2}}}[A-Za-z0-9_.-])?")
"""Letters, digits, spaces, '_', '.', '-'; starting with a letter or digit, not ending in a space."""

BOARDS_HINT = (
    'List your boards with GET /api/images/boards; create one with POST /api/images/boards {"name": ...}.'
)


class BoardNotFound(KittyError):
    code, status = ErrorCode.NOT_FOUND, 404
    default_remediation = (BOARDS_HINT,)


class CollectionFull(KittyError):
    """Over MAX_BOARDS, MAX_BOARD_ITEMS or MAX_FAVOURITES: nothing was added."""

    code, status = ErrorCode.VALIDATION_ERROR, 409


def owner_key(caller: ApiKey | None) -> str:
    """Whose favourites and boards: the caller's key id; the shared namespace without keys."""
    return caller.key_id if caller is not None else SHARED_OWNER


def validate_board_name(name: str) -> str:
    if not BOARD_NAME.fullmatch(name):
        raise ValidationFailed(
            f"Invalid board name {name[:80]!r}: 1 to {MAX_BOARD_NAME_CHARS} characters, letters, digits,"
            " spaces and '_', '.', '-', starting with a letter or digit and not ending in a space.",
            remediation=["Choose a name like 'Fox studies' or 'client-2025.01'."],
            detail={"field": "name", "max_chars": MAX_BOARD_NAME_CHARS},
        )
    return name


@dataclass(frozen=True)
class BoardInfo:
    name: str
    count: int


class Collections:
    """Favourites and boards of each caller, over the gallery index (for an image's order member)
    and ownership (a caller may collect only images it may see)."""

    def __init__(self, redis: Redis, prefix: str, gallery: GalleryIndex, ownership: Ownership) -> None:
        self.redis, self.prefix, self.gallery, self.ownership = redis, prefix, gallery, ownership

    # --- keys -------------------------------------------------------------------------------------
    def favourites_key(self, caller: ApiKey | None) -> str:
        return FAVOURITES_KEY.format(prefix=self.prefix, owner=owner_key(caller))

    def board_names_key(self, caller: ApiKey | None) -> str:
        return BOARD_NAMES_KEY.format(prefix=self.prefix, owner=owner_key(caller))

    def board_key(self, caller: ApiKey | None, name: str) -> str:
        return BOARD_KEY.format(prefix=self.prefix, owner=owner_key(caller), name=name)

    def existing_board_key(self, caller: ApiKey | None, name: str) -> str:
        """The board's key; BoardNotFound when the caller has no board of that name."""
        validate_board_name(name)
        with redis_errors():
            if not self.redis.sismember(self.board_names_key(caller), name):
                raise BoardNotFound(f"no board named '{name}'", detail={"board": name})
        return self.board_key(caller, name)

    # --- images -----------------------------------------------------------------------------------
    def visible_token(self, caller: ApiKey | None, key: str) -> str:
        """The gallery token of an indexed image the caller may see; 404 otherwise (another key's
        image answers as one that does not exist)."""
        item = self.gallery.get(key)
        if item is None:
            raise KeyNotFound(f"no image with key '{key}'")
        self.ownership.require_image(caller, key)
        return token_for(item)

    def _add(self, set_key: str, caller: ApiKey | None, key: str, cap: int, what: str) -> None:
        token = self.visible_token(caller, key)
        with redis_errors():
            if self.redis.zadd(set_key, {token: 0}) and self.redis.zcard(set_key) > cap:
                self.redis.zrem(set_key, token)  # added past the cap (or raced to it): undo
                raise CollectionFull(
                    f"{what} already holds {cap:,} images",
                    remediation=[f"Remove images you no longer need from {what} first."],
                    detail={"max_items": cap},
                )

    def _remove(self, set_key: str, caller: ApiKey | None, key: str) -> None:
        """Idempotent for the caller's own entries; an image it never collected and may not see is
        a 404, as everywhere else."""
        item = self.gallery.get(key)
        with redis_errors():
            if item is not None and self.redis.zrem(set_key, token_for(item)):
                return
            # An image since deleted (or re-indexed with another time): find its token by the key's id.
            tokens = [
                token
                for id_part in ids_of(key)
                for token, _ in self.redis.zscan_iter(set_key, match=f"*{_glob_escape(id_part)}")
            ]
            if tokens:
                self.redis.zrem(set_key, *tokens)
                return
        self.visible_token(caller, key)

    def favourite(self, caller: ApiKey | None, key: str) -> None:
        self._add(self.favourites_key(caller), caller, key, MAX_FAVOURITES, "your favourites")

    def unfavourite(self, caller: ApiKey | None, key: str) -> None:
        self._remove(self.favourites_key(caller), caller, key)

    # --- boards -----------------------------------------------------------------------------------
    def boards(self, caller: ApiKey | None) -> list[BoardInfo]:
        with redis_errors():
            names = sorted(_text(n) for n in self.redis.smembers(self.board_names_key(caller)))
            with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(self.board_key(caller, name))
                counts = pipe.execute() if names else []
        return [BoardInfo(name, int(count)) for name, count in zip(names, counts, strict=True)]

    def create_board(self, caller: ApiKey | None, name: str) -> bool:
        """Make a board; False when the caller already has one of that name (nothing changes)."""
        validate_board_name(name)
        names_key = self.board_names_key(caller)
        with redis_errors():
            if not self.redis.sadd(names_key, name):
                return False
            if self.redis.scard(names_key) > MAX_BOARDS:
                self.redis.srem(names_key, name)
                raise CollectionFull(
                    f"you already have {MAX_BOARDS} boards",
                    remediation=["Delete a board you no longer need: DELETE /api/images/boards/{name}."],
                    detail={"max_boards": MAX_BOARDS},
                )
        return True

    def delete_board(self, caller: ApiKey | None, name: str) -> None:
        board_key = self.existing_board_key(caller, name)
        with redis_errors(), self.redis.pipeline() as pipe:
            pipe.srem(self.board_names_key(caller), name)
            pipe.delete(board_key)
            pipe.execute()

    def add_to_board(self, caller: ApiKey | None, name: str, key: str) -> None:
        board_key = self.existing_board_key(caller, name)
        self._add(board_key, caller, key, MAX_BOARD_ITEMS, f"board '{name}'")

    def remove_from_board(self, caller: ApiKey | None, name: str, key: str) -> None:
        self._remove(self.existing_board_key(caller, name), caller, key)

    # --- the first layout ---------------------------------------------------------------------------
    def migrate_legacy(self) -> int:
        """Rewrite favourites and boards of the first gallery layout (members ``<stamp>|<key>``) as
        tokens of the images the index holds now, dropping images gone since; returns how many
        members were rewritten. Idempotent; run after the index is rebuilt."""
        rewritten = 0
        with redis_errors():
            for pattern in (FAVOURITES_KEY, BOARD_KEY):
                match = pattern.format(prefix=_glob_escape(self.prefix), owner="*", name="*")
                for set_key in self.redis.scan_iter(match=match):
                    legacy = [_text(m) for m, _ in self.redis.zscan_iter(set_key, match="*|*")]
                    if not legacy:
                        continue
                    items = [self.gallery.get(member.split("|", 1)[1]) for member in legacy]
                    with self.redis.pipeline() as pipe:
                        pipe.zrem(set_key, *legacy)
                        tokens = {token_for(item): 0 for item in items if item is not None}
                        if tokens:
                            pipe.zadd(set_key, tokens)
                        pipe.execute()
                    rewritten += len(legacy)
        return rewritten

    # --- listings ---------------------------------------------------------------------------------
    def find(
        self,
        caller: ApiKey | None,
        query: GalleryQuery,
        limit: int,
        cursor: str | None = None,
        *,
        owner: str | None,
        favourite: bool = False,
        board: str | None = None,
        oldest_first: bool = False,
    ) -> tuple[list[LatestItem], str | None]:
        """A filtered page of the gallery (`owner`'s images, or everyone's when None). With a board
        or favourites, their set is walked instead of the index: a small board of a large gallery
        pages as fast as the gallery does. What a caller collected it could see, so the owner
        check is theirs."""
        collected = [
            *([self.existing_board_key(caller, board)] if board is not None else []),
            *([self.favourites_key(caller)] if favourite else []),
        ]
        if not collected:
            return self.gallery.search(replace(query, owner=owner), limit, cursor, oldest_first=oldest_first)
        source, *also_in = collected
        return self.gallery.search(
            replace(query, owner=None),
            limit,
            cursor,
            source=source,
            also_in=tuple(also_in),
            oldest_first=oldest_first,
        )

    def annotate(self, caller: ApiKey | None, items: list[LatestItem]) -> None:
        """Mark each item starred or not and name the caller's boards that hold it: one Redis round
        trip, two when the caller has boards."""
        if not items:
            return
        members = [token_for(item) for item in items]
        with redis_errors():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.zmscore(self.favourites_key(caller), members)
                pipe.smembers(self.board_names_key(caller))
                starred, raw_names = pipe.execute()
            names = sorted(_text(n) for n in raw_names)
            holdings: list[list[float | None]] = []
            if names:
                with self.redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.zmscore(self.board_key(caller, name), members)
                    holdings = pipe.execute()
        for index, item in enumerate(items):
            item.favourite = starred[index] is not None
            held = [name for name, scores in zip(names, holdings, strict=True) if scores[index] is not None]
            item.boards = held or None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob (MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)

"""The gallery index's layout (issue 19: ≤ 300 bytes an image at a million) on a real redis-server:
one sorted-set member an image that says every card field back exactly, found by key without a
second structure for the keys the worker makes, by alias for any other key; cursors that walk each
image once in both directions; and the first layout's favourites and boards carried over on start."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from services.contracts import LatestItem
from services.images_service.app import create_app
from services.images_service.gallery import GalleryIndex, GalleryQuery, decode, encode
from services.images_service.queue import connect_redis
from tests.support.harness import Harness

MADE = datetime(2025, 3, 1, 12, 0, 5, 123456, tzinfo=UTC)

KEYS = {
    "made by the worker": "images/20250301_120005_ab12cd34.png",
    "made in another second": "images/20250301_110000_ab12cd34.png",
    "shaped like a made key, no real time": "images/20250301_000060_0000003c.png",
    "foreign": "images/holiday/IMG_0042.png",
    "folder ending in .png": "images/x.png20250301_120005_ab12cd34.png",
}


def full_item(key: str, **changes: object) -> LatestItem:
    """An item with every field the index keeps set to something other than its default."""
    fields: dict[str, object] = {
        "key": key,
        "size": 123_456,
        "last_modified": MADE.isoformat(),
        "meta_key": key.removesuffix(".png") + ".json",
        "thumb_key": key.removesuffix(".png") + ".thumb.webp",
        "prompt": 'a "quoted" fox | pipe, ünïcødé, \\ and a\nnewline',
        "negative_prompt": "blur",
        "model": "sdxl",
        "engine": "comfyui",
        "seed": 2**40 + 7,
        "width": 1024,
        "height": 768,
        "steps": 30,
        "cfg": 6.5,
        "scheduler": "euler_a",
        "refiner": True,
        "preset": "cinematic",
        "quality": "high",
        "job_id": "0f" * 16,
        "owner": "0123456789ab",
    }
    return LatestItem.model_validate({**fields, **changes})


@pytest.fixture
def index(redis_url: str) -> GalleryIndex:
    return GalleryIndex(Redis.from_url(redis_url), "test")


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS.keys())
def test_every_field_comes_back_exactly(index: GalleryIndex, key: str) -> None:
    for item in (
        full_item(key),
        full_item(key, thumb_key=None, meta_key=None, cfg=7.0, refiner=False, owner=None),
        full_item(key, thumb_key="elsewhere/t.webp", meta_key="elsewhere/m.json"),
        LatestItem(key=key, size=1, last_modified=MADE.isoformat()),  # a PNG without a sidecar
    ):
        assert decode(encode(item)) == item
        index.add(item)
        assert index.get(key) == item
        assert index.count() == 1
    assert index.page(5)[0] == [item]


def test_a_made_key_needs_no_alias_and_any_other_key_has_one(index: GalleryIndex) -> None:
    for key in KEYS.values():
        index.add(full_item(key))
    aliased = {k.decode() for k in index.redis.hkeys(index.aliases_key)}
    assert aliased == set(KEYS.values()) - {KEYS["made by the worker"]}
    assert index.count() == len(KEYS)
    for key in KEYS.values():
        assert index.get(key) == full_item(key)
        index.remove(key)
        assert index.get(key) is None
    assert index.count() == 0 and not index.redis.exists(index.aliases_key)
    assert not index.redis.exists(index.owner_key("0123456789ab"))


def test_one_entry_an_image_even_when_its_time_changes(index: GalleryIndex) -> None:
    key = KEYS["made by the worker"]
    index.add(full_item(key))
    index.add(full_item(key))
    later = full_item(key, last_modified=(MADE + timedelta(milliseconds=300)).isoformat(), prompt="again")
    index.add(later)
    assert index.count() == 1 and index.get(key) == later
    assert index.redis.zcard(index.owner_key("0123456789ab")) == 1


def test_a_typical_entry_is_compact() -> None:
    """What a worker indexes for a 512² SD1.5 image: about 145 bytes besides the prompt. Redis adds
    ~90 a sorted-set member, so an image with a prompt of up to ~65 characters costs ≤ 300 bytes."""
    item = full_item(
        "images/20250301_120005_ab12cd34.png",
        prompt="a lighthouse at dusk, oil on canvas",
        negative_prompt="",
        model="sd15",
        engine="diffusers",
        seed=1234567,
        width=512,
        height=512,
        cfg=7.0,
        scheduler=None,
        refiner=False,
        preset=None,
        quality=None,
        owner=None,
        job_id="9c" * 16,
    )
    assert len(encode(item).encode()) - len(item.prompt or "") <= 145, encode(item)


def walk(index: GalleryIndex, *, oldest_first: bool, limit: int, **query: object) -> list[str]:
    keys: list[str] = []
    cursor = None
    for _ in range(100):
        items, cursor = index.search(GalleryQuery(**query), limit, cursor, oldest_first=oldest_first)  # type: ignore[arg-type]
        keys += [item.key for item in items]
        if cursor is None:
            return keys
    raise AssertionError("the walk did not end")


def test_cursors_walk_each_image_once_both_ways(index: GalleryIndex) -> None:
    """Made and foreign keys, several in one second and two in one microsecond, in a shuffled order."""
    moments = [MADE + timedelta(microseconds=step * 250_000) for step in range(12)] + [MADE, MADE]
    keys = [f"images/20250301_{m:%H%M%S}_{n:08x}.png" for n, m in enumerate(moments[:10])]
    keys += ["images/a.png", "images/b.png", "images/c.png", "images/d.png"]
    items = [
        full_item(key, last_modified=m.isoformat(), owner=None) for key, m in zip(keys, moments, strict=True)
    ]
    for item in reversed(items):
        index.add(item)
    newest_first = [i.key for i in sorted(items, key=lambda i: (i.last_modified, encode(i)), reverse=True)]

    for limit in (1, 3, 14, 20):
        assert walk(index, oldest_first=False, limit=limit) == newest_first
        assert walk(index, oldest_first=True, limit=limit) == list(reversed(newest_first))
        pages, cursor = [], None
        while True:
            page, cursor = index.page(limit, cursor)
            pages += [item.key for item in page]
            if cursor is None:
                break
        assert pages == newest_first
    since, until = MADE + timedelta(microseconds=500_000), MADE + timedelta(microseconds=1_500_000)
    assert (
        walk(index, oldest_first=False, limit=2, since=since, until=until)
        == [key for key, m in zip(keys, moments, strict=True) if since <= m < until][::-1]
    )


def test_an_owners_images_page_from_its_own_set(index: GalleryIndex) -> None:
    mine = [
        full_item(
            f"images/20250301_1200{n:02d}_{n:08x}.png",
            last_modified=(MADE + timedelta(seconds=n)).isoformat(),
        )
        for n in range(5)
    ]
    theirs = full_item("images/20250301_120030_ffffffff.png", owner="ba9876543210")
    for item in [*mine, theirs]:
        index.add(item)
    first, cursor = index.page(3, owner="0123456789ab")
    rest, end = index.page(3, cursor, owner="0123456789ab")
    assert [i.key for i in first + rest] == [i.key for i in reversed(mine)] and end is None
    assert first[0] == mine[-1]


# --- the first layout, carried over -----------------------------------------------------------------
def legacy_member(item: LatestItem) -> str:
    stamp = int(datetime.fromisoformat(item.last_modified).timestamp() * 1_000_000)
    return f"{stamp:016d}|{item.key}"


def test_the_first_layouts_favourites_and_boards_carry_over_on_start(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory()
    keys = []
    for seed in range(3):
        job_id = harness.generate(seed=seed, prompt=f"picture {seed}")
        harness.work()
        keys.append(harness.job(job_id)["result"]["png_key"])
    prefix = harness.settings.queue_prefix
    redis = connect_redis(harness.settings.redis_url)
    index = GalleryIndex(redis, prefix)
    items = [index.get(key) for key in keys]
    assert all(items)
    # Redis as the first layout left it: an order set, an items hash, favourites and a board of
    # ``<stamp>|<key>`` members (one of an image deleted since).
    redis.flushdb()
    members = {legacy_member(item): 0 for item in items if item}
    redis.zadd(f"{prefix}:gallery:order", members)
    redis.hset(f"{prefix}:gallery:items", mapping={i.key: i.model_dump_json() for i in items if i})
    redis.zadd(f"{prefix}:gallery:order:0123456789ab", members)
    gone = "0000000000000001|images/20000101_000000_00000000.png"
    redis.zadd(f"{prefix}:fav:shared", {legacy_member(items[0]): 0, gone: 0})  # type: ignore[arg-type]
    redis.sadd(f"{prefix}:boards:shared", "picks")
    redis.zadd(f"{prefix}:board:shared:picks", {legacy_member(items[1]): 0, legacy_member(items[2]): 0})  # type: ignore[arg-type]

    with TestClient(create_app(harness.settings, store=harness.store)) as client:
        client.app.state.gallery_rebuild.join(timeout=30)  # type: ignore[attr-defined]
        listed = [i["key"] for i in client.get("/api/images/latest").json()["items"]]
        starred = client.get("/api/images/latest", params={"favourite": "true"}).json()["items"]
        board = client.get("/api/images/latest", params={"board": "picks"}).json()["items"]
        boards = client.get("/api/images/boards").json()["boards"]
    assert listed == list(reversed(keys))
    assert [i["key"] for i in starred] == [keys[0]] and starred[0]["favourite"] is True
    assert [i["key"] for i in board] == [keys[2], keys[1]] and board[0]["boards"] == ["picks"]
    assert [(b["name"], b["count"]) for b in boards] == [("picks", 2)]
    left = {k.decode() for k in redis.scan_iter(match=f"{prefix}:gallery:*")}
    assert left == {f"{prefix}:gallery:index"}, left
    assert redis.zcard(f"{prefix}:fav:shared") == 1  # the deleted image's star is gone

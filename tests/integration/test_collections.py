"""Finding images (issue 20): favourites and boards kept per API key, and `latest`'s filters (prompt
text, model, engine, dates, size, favourites, a board, a job's images, oldest first) over the real
gallery index in a real Redis. Two keys never see each other's favourites or boards, and bad input
is a clear 400 or 404, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.common.api_keys import key_id_of
from services.contracts import LatestItem
from services.images_service.collections import MAX_BOARDS
from services.images_service.gallery import GalleryIndex
from services.images_service.queue import connect_redis
from tests.support.harness import Harness

ALICE, BOB = "alice-6f1e0c3b9d2a4e77", "bob-3c8a1f5e7b0d4a22"
API_KEYS = f"{ALICE}:pro, {BOB}:free"
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def as_key(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


def index_of(harness: Harness) -> GalleryIndex:
    return GalleryIndex(connect_redis(harness.settings.redis_url), harness.settings.queue_prefix)


def add_image(harness: Harness, number: int, *, owner: str | None = None, **fields: Any) -> str:
    """An indexed image made `number` hours after START (the index is what listings read)."""
    key = f"images/20250301_{number:06d}_{number:08x}.png"
    values: dict[str, Any] = {
        "prompt": f"picture {number}",
        "model": "fake-model",
        "engine": "diffusers",
        "width": 512,
        "height": 512,
        "job_id": f"job-{number}",
        **fields,
    }
    last_modified = (START + timedelta(hours=number)).isoformat()
    owned = key_id_of(owner) if owner else None
    index_of(harness).add(LatestItem(key=key, size=100, last_modified=last_modified, owner=owned, **values))
    return key


def listed(harness: Harness, key: str | None = None, **params: Any) -> list[str]:
    """Every key a filtered listing walks to, page after page (pages may be short or empty)."""
    keys: list[str] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = harness.client.get("/api/images/latest", params=query, headers=as_key(key))
        assert response.status_code == 200, response.text
        body = response.json()
        keys += [item["key"] for item in body["items"]]
        cursor = body.get("next_cursor")
        if not cursor:
            return keys
    raise AssertionError("the listing did not end")


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


@pytest.fixture
def harness(harness_with: Callable[..., Harness]) -> Harness:
    return settled(harness_with())


def settled(harness: Harness) -> Harness:
    """`harness` once the service's start-up rebuild of the empty index has run: it drops entries
    older than its listing that the store lacks, as the images these tests index directly are."""
    harness.client.app.state.gallery_rebuild.join(timeout=30)  # type: ignore[attr-defined]
    return harness


@pytest.fixture
def tenants(harness_with: Callable[..., Harness]) -> Harness:
    return settled(harness_with(api_keys=API_KEYS))


# --- filters ------------------------------------------------------------------------------------
def test_filters_narrow_the_listing(harness: Harness) -> None:
    fox = add_image(harness, 1, prompt="A Red FOX in snow", model="sd15", width=512, height=768)
    owl = add_image(harness, 2, prompt="an owl", model="sdxl", engine="comfyui", width=1024, height=1024)
    batch = [
        add_image(harness, 3, prompt="fox cubs", job_id="job-many"),
        add_image(harness, 4, job_id="job-many"),
    ]
    assert listed(harness, q="red fox") == [fox]
    assert listed(harness, q="FOX") == [batch[0], fox]
    assert listed(harness, model="sdxl") == [owl]
    assert listed(harness, engine="comfyui") == [owl]
    assert listed(harness, size="512x768") == [fox]
    assert listed(harness, min_width=1000) == [owl]
    assert listed(harness, min_height=700) == [owl, fox]
    assert listed(harness, job_id="job-many") == list(reversed(batch))
    assert listed(harness, since=(START + timedelta(hours=2)).isoformat(), until="2025-03-01T15:30:00Z") == [
        batch[0],
        owl,
    ]
    assert listed(harness, until="2025-03-01") == list(reversed([fox, owl, *batch]))  # the whole day
    assert listed(harness, since="2025-03-02") == []
    assert listed(harness, sort="oldest") == [fox, owl, *batch]
    assert listed(harness, q="fox", sort="oldest") == [fox, batch[0]]


def test_a_rare_match_in_a_large_gallery_pages_with_bounded_work(harness: Harness) -> None:
    """Pages stop after the scan budget, possibly empty, with a cursor that goes on from there."""
    index = index_of(harness)
    rare = add_image(harness, 0, prompt="the needle")
    for number in range(1, 2_500):
        add_image(harness, number)
    first = harness.client.get("/api/images/latest", params={"q": "needle"}).json()
    assert first["items"] == [] and first["next_cursor"]
    assert listed(harness, q="needle") == [rare]
    assert index.count() == 2_500
    plain = harness.client.get("/api/images/latest", params={"limit": 3}).json()
    assert len(plain["items"]) == 3 and plain["items"][0]["favourite"] is False


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-01"}, "until"),
        ({"size": "big"}, "size"),
        ({"size": "0x10"}, "size"),
        ({"min_width": "-1"}, "min_width"),
        ({"q": ""}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"sort": "random"}, "sort"),
        ({"favourite": "maybe"}, "favourite"),
        ({"board": "no/slash"}, "name"),
        ({"since": "2025-01-01\x00"}, "since"),
    ],
)
def test_bad_filters_are_refused_with_the_field(harness: Harness, params: dict[str, str], field: str) -> None:
    error = assert_error(harness.client.get("/api/images/latest", params=params), 400, "VALIDATION_ERROR")
    assert field in str(error)


# --- favourites ---------------------------------------------------------------------------------
def test_favourites_are_starred_listed_and_unstarred(harness: Harness) -> None:
    keys = [add_image(harness, number) for number in range(4)]
    client = harness.client
    assert client.put(f"/api/images/favourites/{keys[1]}").status_code == 204
    assert client.put(f"/api/images/favourites/{keys[3]}").status_code == 204
    assert client.put(f"/api/images/favourites/{keys[3]}").status_code == 204  # again: no change
    assert listed(harness, favourite="true") == [keys[3], keys[1]]
    items = {item["key"]: item for item in client.get("/api/images/latest").json()["items"]}
    assert [items[k]["favourite"] for k in keys] == [False, True, False, True]
    assert listed(harness, favourite="true", q="picture 1") == [keys[1]]
    assert client.delete(f"/api/images/favourites/{keys[3]}").status_code == 204
    assert client.delete(f"/api/images/favourites/{keys[3]}").status_code == 204
    assert listed(harness, favourite="true") == [keys[1]]


def test_a_deleted_favourite_leaves_the_listing_and_can_be_unstarred(harness: Harness) -> None:
    key = add_image(harness, 1)
    harness.client.put(f"/api/images/favourites/{key}")
    index_of(harness).remove(key)
    assert listed(harness, favourite="true") == []
    assert harness.client.delete(f"/api/images/favourites/{key}").status_code == 204


def test_favouriting_an_unknown_or_malformed_key_is_refused(harness: Harness) -> None:
    client = harness.client
    assert_error(
        client.put("/api/images/favourites/images/20990101_000000_00000000.png"), 404, "KEY_NOT_FOUND"
    )
    assert_error(
        client.delete("/api/images/favourites/images/20990101_000000_00000000.png"), 404, "KEY_NOT_FOUND"
    )
    for bad in ("other/x.png", "images/../x.png", "images/x%00.png", "images/%ff.png", "images/x.jpg"):
        response = client.put(f"/api/images/favourites/{bad}")
        assert response.status_code in (400, 404), (bad, response.text)
        assert response.json()["error"]["code"] in ("VALIDATION_ERROR", "KEY_NOT_FOUND")


# --- boards -------------------------------------------------------------------------------------
def test_boards_are_made_filled_listed_and_deleted(harness: Harness) -> None:
    keys = [add_image(harness, number) for number in range(3)]
    client = harness.client
    created = client.post("/api/images/boards", json={"name": "Fox studies"})
    assert created.status_code == 201 and created.json()["boards"] == [{"name": "Fox studies", "count": 0}]
    assert client.post("/api/images/boards", json={"name": "Fox studies"}).status_code == 200
    for key in keys[:2]:
        assert client.put(f"/api/images/boards/Fox studies/items/{key}").status_code == 204
    assert client.get("/api/images/boards").json()["boards"] == [{"name": "Fox studies", "count": 2}]
    assert listed(harness, board="Fox studies") == [keys[1], keys[0]]
    assert listed(harness, board="Fox studies", sort="oldest") == keys[:2]
    items = {item["key"]: item for item in client.get("/api/images/latest").json()["items"]}
    assert items[keys[0]]["boards"] == ["Fox studies"] and "boards" not in items[keys[2]]
    harness.client.put(f"/api/images/favourites/{keys[0]}")
    assert listed(harness, board="Fox studies", favourite="true") == [keys[0]]
    assert client.delete(f"/api/images/boards/Fox studies/items/{keys[1]}").status_code == 204
    assert listed(harness, board="Fox studies") == [keys[0]]
    assert client.delete("/api/images/boards/Fox studies").status_code == 204
    assert client.get("/api/images/boards").json()["boards"] == []
    assert listed(harness) == list(reversed(keys))  # the images stay


def test_unknown_boards_and_bad_names_are_clear_errors(harness: Harness) -> None:
    key = add_image(harness, 1)
    client = harness.client
    error = assert_error(client.get("/api/images/latest", params={"board": "nope"}), 404, "NOT_FOUND")
    assert "POST /api/images/boards" in error["remediation"][0]
    assert_error(client.put(f"/api/images/boards/nope/items/{key}"), 404, "NOT_FOUND")
    assert_error(client.delete("/api/images/boards/nope"), 404, "NOT_FOUND")
    for name in ("", " lead", "trail ", "a:b", "x" * 65, "naïve", "tab\there", "new\nline"):
        response = client.post("/api/images/boards", json={"name": name})
        error = assert_error(response, 400, "VALIDATION_ERROR")
        assert error["remediation"], name
    for raw in ("%00", "%ff", "a%2Fb", "%E2%80%8B"):
        assert client.delete(f"/api/images/boards/{raw}").status_code in (400, 404)
    assert (
        client.post(
            "/api/images/boards", content=b"\xff\xfe", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert client.post("/api/images/boards", data={"name": "x"}).status_code == 415


def test_too_many_boards_are_refused(harness: Harness) -> None:
    for number in range(MAX_BOARDS):
        assert harness.client.post("/api/images/boards", json={"name": f"b{number}"}).status_code == 201
    error = assert_error(
        harness.client.post("/api/images/boards", json={"name": "one more"}), 409, "VALIDATION_ERROR"
    )
    assert "Delete a board" in error["remediation"][0]
    assert len(harness.client.get("/api/images/boards").json()["boards"]) == MAX_BOARDS


# --- two keys -----------------------------------------------------------------------------------
def test_two_keys_never_see_each_others_favourites_or_boards(tenants: Harness) -> None:
    client = tenants.client
    alices = add_image(tenants, 1, owner=ALICE)
    bobs = add_image(tenants, 2, owner=BOB)
    assert client.put(f"/api/images/favourites/{alices}", headers=as_key(ALICE)).status_code == 204
    client.post("/api/images/boards", json={"name": "mine"}, headers=as_key(ALICE))
    client.put(f"/api/images/boards/mine/items/{alices}", headers=as_key(ALICE))

    # Bob cannot collect Alice's image: it answers as one that does not exist.
    assert_error(client.put(f"/api/images/favourites/{alices}", headers=as_key(BOB)), 404, "KEY_NOT_FOUND")
    assert_error(client.delete(f"/api/images/favourites/{alices}", headers=as_key(BOB)), 404, "KEY_NOT_FOUND")
    # Her board is not his, even by the same name.
    assert client.get("/api/images/boards", headers=as_key(BOB)).json()["boards"] == []
    assert_error(
        client.get("/api/images/latest", params={"board": "mine"}, headers=as_key(BOB)), 404, "NOT_FOUND"
    )
    assert listed(tenants, BOB, favourite="true") == []
    client.post("/api/images/boards", json={"name": "mine"}, headers=as_key(BOB))
    assert_error(
        client.put(f"/api/images/boards/mine/items/{alices}", headers=as_key(BOB)), 404, "KEY_NOT_FOUND"
    )
    assert client.put(f"/api/images/boards/mine/items/{bobs}", headers=as_key(BOB)).status_code == 204
    assert listed(tenants, BOB, board="mine") == [bobs]
    assert listed(tenants, ALICE, board="mine") == [alices]
    assert listed(tenants, ALICE, favourite="true") == [alices]
    (item,) = client.get("/api/images/latest", headers=as_key(BOB)).json()["items"]
    assert item["key"] == bobs and item["favourite"] is False and item["boards"] == ["mine"]
    assert client.get("/api/images/boards").status_code == 401

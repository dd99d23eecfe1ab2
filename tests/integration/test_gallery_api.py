"""What the gallery and CLI read: the listing (index-backed, cursor-paged, with card fields and
thumbnails), the job event stream, models, delete, and the index rebuilt from storage."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.images_service.app import create_app
from services.images_service.gallery import GalleryIndex
from services.images_service.queue import connect_redis
from tests.support.harness import MODEL, Harness


def fetch(harness: Harness, url: str) -> httpx.Response:
    """A download URL is served by the service itself (fs) or by S3."""
    if url.startswith(str(harness.client.base_url)):
        return harness.client.get(url)
    return httpx.get(url)


def make_images(harness: Harness, count: int) -> list[str]:
    keys = []
    for seed in range(count):
        job_id = harness.generate(seed=seed, prompt=f"picture {seed}", negative_prompt="blur")
        harness.work()
        keys.append(harness.job(job_id)["result"]["png_key"])
    return keys


def test_listing_carries_card_fields_and_a_thumbnail(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    (key,) = make_images(harness, 1)
    (item,) = harness.client.get("/api/images/latest").json()["items"]
    assert item["key"] == key
    assert (item["prompt"], item["negative_prompt"], item["model"], item["seed"]) == (
        "picture 0",
        "blur",
        MODEL,
        0,
    )
    assert (item["width"], item["height"], item["steps"], item["engine"]) == (64, 48, 4, "diffusers")
    thumb = fetch(harness, item["thumb_url"])
    assert thumb.status_code == 200
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "WEBP" and image.size == (64, 48)
    assert len(thumb.content) < item["size"]


def test_cursor_pages_walk_every_image_once_newest_first(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    keys = make_images(harness, 5)
    seen, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.client.get("/api/images/latest", params=params).json()
        seen += [i["key"] for i in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == list(reversed(keys))


@pytest.mark.parametrize("cursor", ["nope", "123|images/x.png", "0000000000000001|" + "x" * 1025])
def test_bad_cursor_is_refused(harness_factory: Callable[..., Harness], cursor: str) -> None:
    response = harness_factory().client.get("/api/images/latest", params={"cursor": cursor})
    assert response.status_code == 400 and response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_empty_index_is_rebuilt_from_storage_on_start(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    keys = make_images(harness, 3)
    connect_redis(harness.settings.redis_url).flushdb()  # Redis lost everything; the bucket did not
    with TestClient(create_app(harness.settings, store=harness.store)) as client:
        gallery = client.app.state.gallery
        deadline = time.monotonic() + 10
        while gallery.count() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        items = client.get("/api/images/latest").json()["items"]
    assert [i["key"] for i in items] == list(reversed(keys))
    assert items[0]["prompt"] == "picture 2" and items[0]["thumb_url"]


def test_rebuild_lists_a_png_without_sidecar(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    harness.store.put("images/20200101_000000_0badf00d.png", buffer.getvalue(), "image/png")
    index = GalleryIndex(connect_redis(harness.settings.redis_url), harness.settings.queue_prefix)
    assert index.rebuild(harness.store, harness.settings.s3_prefix) == 1
    (item,) = harness.client.get("/api/images/latest").json()["items"]
    assert item["key"] == "images/20200101_000000_0badf00d.png" and "prompt" not in item


def test_delete_removes_image_sidecar_thumbnail_and_listing(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    keep, gone = make_images(harness, 2)
    response = harness.client.delete(f"/api/images/items/{gone}")
    assert response.status_code == 204
    assert [i["key"] for i in harness.client.get("/api/images/latest").json()["items"]] == [keep]
    for part in (gone, gone.replace(".png", ".json"), gone.replace(".png", ".thumb.webp")):
        assert harness.store.head(part) is None
    assert harness.client.post("/api/images/select", json={"key": gone}).status_code == 404
    again = harness.client.delete(f"/api/images/items/{gone}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "KEY_NOT_FOUND"
    outside = harness.client.delete("/api/images/items/other/x.png")
    assert outside.status_code == 400


def test_models_lists_registered_models_with_defaults(harness_factory: Callable[..., Harness]) -> None:
    body = harness_factory().client.get("/api/images/models").json()
    assert body["default"] == MODEL
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name[MODEL]["defaults"]["width"] == 64 and by_name["fake-xl"]["refiner"] == MODEL
    assert "path" not in json.dumps(body)


def test_event_stream_ends_with_the_terminal_view(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    job_id = harness.generate()
    harness.work()
    with harness.client.stream("GET", f"/api/images/jobs/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1]["status"] == "done" and events[-1]["result"]["png_key"]
    assert "event: job" in body


def test_event_stream_of_unknown_job_is_404(harness_factory: Callable[..., Harness]) -> None:
    response = harness_factory().client.get("/api/images/jobs/nope/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_reindex_command_rebuilds_the_index(
    harness_factory: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from services.images_service import admin

    harness = harness_factory()
    keys = make_images(harness, 2)
    connect_redis(harness.settings.redis_url).flushdb()
    monkeypatch.setattr(admin, "get_settings", lambda: harness.settings)
    result = CliRunner().invoke(admin.cli, ["reindex"])
    assert result.exit_code == 0 and "indexed 2 images" in result.output
    listed = [i["key"] for i in harness.client.get("/api/images/latest").json()["items"]]
    assert listed == list(reversed(keys))

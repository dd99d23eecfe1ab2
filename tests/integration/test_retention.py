"""Uploads expire after IMAGES_UPLOADS_TTL_DAYS and the janitor deletes them; generated images are
never touched. On both stores (the filesystem and S3 through moto's server)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from PIL import Image
from prometheus_client import REGISTRY

from services.images_service.retention import sweep_uploads
from services.images_service.storage.keys import meta_key_for
from tests.support.harness import Harness


def upload(harness: Harness) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    response = harness.client.post(
        "/api/images/uploads", content=buffer.getvalue(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def exists(harness: Harness, key: str) -> bool:
    return harness.store.head(key) is not None


def test_uploads_past_their_ttl_are_deleted_and_images_kept(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    job_id = harness.generate()
    harness.work()
    png_key = harness.job(job_id)["result"]["png_key"]
    uploads = [upload(harness), upload(harness)]
    now, ttl = datetime.now(UTC), timedelta(days=harness.settings.uploads_ttl_days)
    assert ttl == timedelta(days=7)

    assert sweep_uploads(harness.store, harness.settings, now + ttl - timedelta(hours=1)) == 0
    assert all(exists(harness, key) for key in uploads)
    assert sweep_uploads(harness.store, harness.settings, now + ttl + timedelta(hours=1)) == 2
    assert not any(exists(harness, key) for key in uploads)
    assert exists(harness, png_key) and exists(harness, meta_key_for(png_key))
    assert [item["key"] for item in harness.client.get("/api/images/latest").json()["items"]] == [png_key]


def test_only_uploads_older_than_the_ttl_go(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with()
    old, fresh = upload(harness), upload(harness)
    eight_days_ago = time.time() - 8 * 24 * 3600
    os.utime(harness.settings.images_dir / old, (eight_days_ago, eight_days_ago))

    assert sweep_uploads(harness.store, harness.settings, datetime.now(UTC)) == 1
    assert (exists(harness, old), exists(harness, fresh)) == (False, True)


def test_a_ttl_of_zero_keeps_uploads_forever(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(uploads_ttl_days=0)
    key = upload(harness)
    assert sweep_uploads(harness.store, harness.settings, datetime.now(UTC) + timedelta(days=3650)) == 0
    assert exists(harness, key)


def test_the_janitor_sweeps_on_its_own(harness_with: Callable[..., Harness]) -> None:
    deleted_before = REGISTRY.get_sample_value("images_uploads_deleted_total") or 0.0
    # A TTL of about a second, looked at every 0.2 s.
    harness = harness_with(uploads_ttl_days=1 / 86400, uploads_sweep_interval_s=0.2, janitor_interval_s=0.05)
    key = upload(harness)
    deadline = time.monotonic() + 15
    while exists(harness, key):
        assert time.monotonic() < deadline, "the janitor never deleted the expired upload"
        time.sleep(0.1)
    assert (REGISTRY.get_sample_value("images_uploads_deleted_total") or 0.0) >= deleted_before + 1

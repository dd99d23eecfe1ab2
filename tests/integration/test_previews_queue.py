"""Live previews through the real queue: the API, Redis and a real worker rendering the tiny SD1.5
with the diffusers engine on CPU. While the job runs and after it ends, its view says the preview's
step and ``GET /api/images/jobs/{id}/preview`` answers the WebP; another key's job is a 404, and
without previews (a CPU worker's default) the route says there is none."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from services.images_service.models import ModelRegistry
from services.images_service.tiny import TINY_SD15
from tests.support.harness import Harness
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers_engine import DiffusersEngine

OWNER_KEY = "ent-5b7d9f1a3c2e4d68"
OTHER_KEY = "ent-8c0e2a4b6d1f3e79"
API_KEYS = f"{OWNER_KEY}:enterprise, {OTHER_KEY}:enterprise"

LONG_STEPS = 60
"""Enough tiny-model steps that the job is still running when the test looks."""


@pytest.fixture
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def previewing(harness_with: Callable[..., Harness], engine: DiffusersEngine, tiny_models: Path) -> Harness:  # noqa: F811
    return harness_with(
        engine, models_yaml=tiny_models, preview_every=3, api_keys=API_KEYS, job_timeout_s=300
    )


def as_owner(key: str = OWNER_KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def submit(harness: Harness, **body: object) -> str:
    response = harness.client.post(
        "/api/images/generate",
        json={"prompt": "a lantern in the fog", "model": TINY_SD15, "seed": 3, **body},
        headers=as_owner(),
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def view_of(harness: Harness, job_id: str) -> dict[str, object]:
    response = harness.client.get(f"/api/images/jobs/{job_id}", headers=as_owner())
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_webp(data: bytes, size: tuple[int, int]) -> None:
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP" and image.size == size


def watch_for_preview(harness: Harness, job_id: str, seen: list[tuple[dict[str, object], bytes]]) -> None:
    """Poll the job (as a client would, beside the worker) until a running view shows a preview
    step; keep that view and the preview then fetched."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = view_of(harness, job_id)
        if view["status"] == "started" and view["preview_step"]:
            response = harness.client.get(f"/api/images/jobs/{job_id}/preview", headers=as_owner())
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/webp"
            seen.append((view, response.content))
            return
        if view["status"] in ("done", "error", "canceled"):
            return
        time.sleep(0.02)


def test_a_running_job_shows_its_preview_and_a_done_one_keeps_its_last(previewing: Harness) -> None:
    job_id = submit(previewing, steps=LONG_STEPS, width=64, height=64)
    seen: list[tuple[dict[str, object], bytes]] = []
    watcher = threading.Thread(target=watch_for_preview, args=(previewing, job_id, seen))
    watcher.start()
    try:
        previewing.work()  # RQ's worker installs signal handlers: it runs on the main thread
    finally:
        watcher.join()

    assert seen, "the running job never showed a preview step"
    running, webp = seen[0]
    step = running["preview_step"]
    assert isinstance(step, int) and step % 3 == 0 and 0 < step < LONG_STEPS
    # The tiny VAE draws one latent per 2x2 pixels: a 64x64 render's preview is 32x32.
    assert_webp(webp, (32, 32))
    done = view_of(previewing, job_id)
    assert done["status"] == "done", done
    assert done["preview_step"] == LONG_STEPS  # 60 is a multiple of 3: the last step's latents
    response = previewing.client.get(f"/api/images/jobs/{job_id}/preview", headers=as_owner())
    assert response.status_code == 200
    assert_webp(response.content, (32, 32))


def test_another_keys_job_has_no_preview_for_you(previewing: Harness) -> None:
    job_id = submit(previewing, steps=3)
    previewing.work()
    assert view_of(previewing, job_id)["preview_step"] == 3

    response = previewing.client.get(f"/api/images/jobs/{job_id}/preview", headers=as_owner(OTHER_KEY))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert response.content[:4] != b"RIFF"


def test_without_previews_the_route_says_there_is_none(
    harness_with: Callable[..., Harness],
    engine: DiffusersEngine,
    tiny_models: Path,  # noqa: F811
) -> None:
    # IMAGES_PREVIEW_EVERY=0: off.
    harness = harness_with(engine, models_yaml=tiny_models, api_keys=API_KEYS, preview_every=0)
    job_id = submit(harness, steps=4)
    harness.work()

    view = view_of(harness, job_id)
    assert view["status"] == "done" and view["preview_step"] is None
    response = harness.client.get(f"/api/images/jobs/{job_id}/preview", headers=as_owner())
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "NOT_FOUND"
    assert "has no preview" in error["message"] and "IMAGES_PREVIEW_EVERY" in error["remediation"][0]

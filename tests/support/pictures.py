"""Input pictures for the image-to-image tests of every engine, uploading them, and the pair of
image-to-image and inpainting jobs the server engines' tests run through the queue."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from services.images_service.app import create_app
from services.images_service.engines import make_engine
from services.images_service.models import ModelRegistry
from services.images_service.settings import Settings
from services.images_service.storage import make_store
from tests.support.harness import Harness


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def two_tone() -> Image.Image:
    """192×128, blue-green with a red block on the right: resizing it makes new pixel values."""
    picture = Image.new("RGB", (192, 128), (10, 120, 200))
    picture.paste((240, 30, 60), (120, 0, 192, 128))
    return picture


def left_half() -> Image.Image:
    """Our mask convention: white (repaint) on the left half, black (keep) on the right."""
    mask = Image.new("L", (192, 128), 0)
    mask.paste(255, (0, 0, 96, 128))
    return mask


def kept_pixels(image: Image.Image, mask: Image.Image) -> list[Any]:
    """The pixels of `image` where our `mask` is black (keep)."""
    return [pixel for pixel, repaint in zip(image.getdata(), mask.getdata(), strict=True) if repaint == 0]


def upload_picture(client: TestClient, image: Image.Image) -> str:
    """``POST /api/images/uploads`` of `image` as a PNG; the stored key."""
    headers = {"content-type": "image/png"}
    response = client.post("/api/images/uploads", content=png_of(image), headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


@dataclass
class Img2ImgRun:
    """What `run_img2img_pair` left behind: the two jobs' views and what was stored."""

    image_key: str
    mask_key: str
    views: list[dict[str, Any]]
    whole_png: bytes
    """The image-to-image job's image (strength 0.6)."""
    masked_pngs: list[bytes]
    """The inpainting job's two images (default strength)."""
    sidecar: dict[str, Any]
    """The inpainting job's first sidecar."""


def run_img2img_pair(settings: Settings, engine_name: str) -> Img2ImgRun:
    """Through the real queue, with `engine_name` built as a worker builds it (the store to read
    inputs from): upload `two_tone()` and `left_half()`, then queue an image-to-image job (strength
    0.6, seed 5) and an inpainting job of two images (seed 6), both 96×64 in 4 steps, and work them."""
    store = make_store(settings)
    engine = make_engine(engine_name, settings, ModelRegistry(settings.models_yaml), store)
    try:
        with TestClient(create_app(settings, store=store)) as client:
            harness = Harness(client, settings, store, {engine_name: engine})
            image_key, mask_key = upload_picture(client, two_tone()), upload_picture(client, left_half())
            common = {"engine": engine_name, "image": image_key, "width": 96, "height": 64, "steps": 4}
            whole = harness.generate(**common, strength=0.6, seed=5)
            masked = harness.generate(**common, mask=mask_key, seed=6, num_images=2)
            harness.work(engine_name)
            views = [harness.job(whole), harness.job(masked)]
            assert [view["status"] for view in views] == ["done", "done"], views
            return Img2ImgRun(
                image_key,
                mask_key,
                views,
                whole_png=store.get(views[0]["result"]["png_key"]),
                masked_pngs=[store.get(item["key"]) for item in views[1]["result"]["images"]],
                sidecar=json.loads(store.get(views[1]["result"]["meta_key"])),
            )
    finally:
        engine.close()

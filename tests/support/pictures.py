"""Input pictures for the image-to-image tests of every engine, and uploading them."""

from __future__ import annotations

import io
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image


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

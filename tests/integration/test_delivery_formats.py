"""Delivery formats, on both stores: `select` with `format=jpeg|webp` hands out a converted copy
cached beside the PNG, its A1111 infotext kept as the EXIF UserComment; delete removes the copies."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image

from services.images_service.delivery import EXIF_IFD, USER_COMMENT, user_comment
from services.images_service.metadata import read_png_text
from tests.integration.test_gallery_api import fetch, make_images
from tests.support.harness import Harness


def select(harness: Harness, key: str, **options: object) -> str:
    response = harness.client.post("/api/images/select", json={"key": key, **options})
    assert response.status_code == 200, response.text
    return str(response.json()["imageRef"]["downloadUrl"])


@pytest.mark.parametrize(
    ("fmt", "pil_format", "suffix"), [("jpeg", "JPEG", ".q75.jpg"), ("webp", "WEBP", ".q75.webp")]
)
def test_select_serves_a_converted_copy_with_the_infotext_in_exif(
    harness_factory: Callable[..., Harness], fmt: str, pil_format: str, suffix: str
) -> None:
    harness = harness_factory()
    (key,) = make_images(harness, 1)
    parameters = read_png_text(harness.store.get(key))["parameters"]
    url = select(harness, key, format=fmt, quality=75)
    assert key.removesuffix(".png") + suffix in url
    response = fetch(harness, url)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    assert image.format == pil_format and image.size == (64, 48)
    assert image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT] == user_comment(parameters)
    assert "picture 0" in parameters
    # Cached: a second select presigns the same object, and the PNG is still the original.
    assert harness.store.head(key.removesuffix(".png") + suffix) is not None
    assert key.removesuffix(".png") + suffix in select(harness, key, format=fmt, quality=75)
    assert Image.open(io.BytesIO(fetch(harness, select(harness, key)).content)).format == "PNG"


@pytest.mark.parametrize("options", [{"format": "gif"}, {"format": "jpeg", "quality": 0}, {"quality": 101}])
def test_bad_format_or_quality_is_400(
    harness_factory: Callable[..., Harness], options: dict[str, object]
) -> None:
    harness = harness_factory()
    (key,) = make_images(harness, 1)
    response = harness.client.post("/api/images/select", json={"key": key, **options})
    assert response.status_code == 400


def test_delete_removes_the_converted_copies(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    keep, gone = make_images(harness, 2)
    for fmt, quality in (("jpeg", 90), ("jpeg", 50), ("webp", 90)):
        select(harness, gone, format=fmt, quality=quality)
    select(harness, keep, format="jpeg")
    stem = gone.removesuffix(".png")
    copies = [f"{stem}.q90.jpg", f"{stem}.q50.jpg", f"{stem}.q90.webp"]
    assert all(harness.store.head(copy) is not None for copy in copies)
    assert harness.client.delete(f"/api/images/items/{gone}").status_code == 204
    assert all(harness.store.head(copy) is None for copy in copies)
    assert harness.store.head(keep.removesuffix(".png") + ".q90.jpg") is not None


def test_filesystem_download_converts_on_the_fly(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    (key,) = make_images(harness, 1)
    url = select(harness, key)
    if not url.startswith(str(harness.client.base_url)):
        pytest.skip("S3 serves its own presigned URLs")
    response = harness.client.get(url + "&format=jpeg&quality=60")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    assert harness.client.get(url + "&format=gif").status_code == 400

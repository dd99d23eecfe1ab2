"""Uploads and image-to-image through the API: `POST /api/images/uploads` (PNG/JPEG/WebP that decode,
≤ 20 MB, kept out of the gallery), and generate requests naming an upload or a stored image as
`image`, a mask, or LoRAs — refused at submit time when they cannot run, rendered by the real
diffusers engine on the tiny models through a real worker when they can."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.common.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES
from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.images_service.app import create_app
from services.images_service.models import ModelRegistry
from services.images_service.storage import make_store
from services.images_service.storage.keys import meta_key_for
from services.images_service.tiny import TINY_LORA
from services.images_service.uploads import MAX_UPLOAD_SIDE, read_image
from tests.support.asgi_server import serve_asgi
from tests.support.harness import Harness, make_settings
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
from services.images_service.engines.diffusers_engine import DiffusersEngine

UPLOADS = "/api/images/uploads"

FORMATS = {"image/png": ("PNG", ".png"), "image/jpeg": ("JPEG", ".jpg"), "image/webp": ("WEBP", ".webp")}


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def picture(width: int = 80, height: int = 72) -> Image.Image:
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack([np.tile(ramp, (height, 1))] * 3, -1)
    rgb[..., 2] = 40
    return Image.fromarray(rgb)


def noise(side: int) -> Image.Image:
    """Random pixels: PNG cannot compress them (side² × 3 bytes and a little)."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def upload(client: TestClient, data: bytes, content_type: str = "image/png") -> dict:
    response = client.post(UPLOADS, content=data, headers={"content-type": content_type})
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def harness_factory(
    tmp_path: Path,
    redis_url: str,
    tiny_models: Path,  # noqa: F811
) -> Iterator[Callable[..., Harness]]:
    """A service and worker on the tiny models: the real diffusers engine, reading inputs from the
    service's own store as a worker does."""
    clients: list[TestClient] = []

    def build(**overrides: object) -> Harness:
        settings = make_settings(tmp_path, redis_url, models_yaml=tiny_models, **overrides)
        store = make_store(settings)
        client = TestClient(create_app(settings, store=store))
        client.__enter__()
        clients.append(client)
        registry = ModelRegistry(tiny_models)
        engine = DiffusersEngine(registry, device="cpu", image_loader=partial(read_image, store))
        return Harness(client, settings, store, {"diffusers": engine})

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


@pytest.mark.parametrize("store_kind", ["fs", "s3"])
@pytest.mark.parametrize("content_type", list(FORMATS))
def test_an_upload_is_stored_under_its_own_prefix_and_kept_out_of_the_gallery(
    harness_factory: Callable[..., Harness],
    request: pytest.FixtureRequest,
    store_kind: str,
    content_type: str,
) -> None:
    overrides: dict[str, object] = {}
    if store_kind == "s3":
        overrides = {
            "s3_endpoint_url": request.getfixturevalue("s3_server"),
            "s3_bucket": request.getfixturevalue("s3_bucket"),
            "s3_access_key": "test",
            "s3_secret_key": "test",
        }
    harness = harness_factory(**overrides)
    fmt, suffix = FORMATS[content_type]
    data = encode(picture(), fmt)

    view = upload(harness.client, data, f"{content_type}; charset=binary")

    assert view["key"].startswith("uploads/") and view["key"].endswith(suffix)
    assert (view["width"], view["height"], view["content_type"], view["size"]) == (
        80,
        72,
        content_type,
        len(data),
    )
    assert harness.store.get(view["key"]) == data
    assert harness.client.get("/api/images/latest").json()["items"] == []
    assert harness.store.list_latest(harness.settings.s3_prefix, 10, suffix) == []


def test_a_sideways_phone_photo_counts_upright(harness: Harness) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    picture(80, 48).save(buffer, format="JPEG", exif=exif)

    view = upload(harness.client, buffer.getvalue(), "image/jpg")  # a common misspelling, accepted

    assert (view["width"], view["height"], view["content_type"]) == (48, 80, "image/jpeg")
    assert read_image(harness.store, view["key"]).size == (48, 80)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "words"),
    [
        (b"just some text, not a picture\n", "image/png", 400, "not PNG data"),
        (b"", "image/png", 400, "empty"),
        (encode(picture(), "PNG"), "image/jpeg", 400, "not JPEG data"),
        (encode(noise(64))[:4000], "image/png", 400, "does not decode"),  # cut short
        (encode(picture(), "GIF"), "image/gif", 415, "PNG, JPEG or WebP"),
        (encode(picture(), "PNG"), "application/octet-stream", 415, "PNG, JPEG or WebP"),
        (encode(Image.new("L", (MAX_UPLOAD_SIDE + 1, 8)), "PNG"), "image/png", 400, "4097x8 pixels"),
    ],
)
def test_what_is_not_a_usable_image_is_refused_with_a_remedy(
    harness: Harness, data: bytes, content_type: str, status: int, words: str
) -> None:
    response = harness.client.post(UPLOADS, content=data, headers={"content-type": content_type})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert words in error["message"]
    assert error["remediation"]


def test_uploads_may_be_20_mb_while_every_other_body_stays_under_1_mb(harness: Harness) -> None:
    two_mb = encode(noise(820))
    assert MAX_BODY_BYTES < len(two_mb) < MAX_UPLOAD_BYTES

    assert upload(harness.client, two_mb)["size"] == len(two_mb)
    too_large = harness.client.post(
        UPLOADS, content=b"\0" * (MAX_UPLOAD_BYTES + 1), headers={"content-type": "image/png"}
    )
    assert too_large.status_code == 413
    assert "20 MB" in too_large.json()["error"]["message"]
    generate = harness.client.post(
        "/api/images/generate",
        content=b'{"prompt": "' + b"x" * len(two_mb) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert generate.status_code == 413
    assert "1 MB" in generate.json()["error"]["message"]


def test_the_gateway_carries_an_upload_over_1_mb_but_no_other_body(tmp_path: Path, redis_url: str) -> None:
    two_mb = encode(noise(820))
    service = create_app(make_settings(tmp_path, redis_url))
    with serve_asgi(service, lifespan="on") as service_url:
        with TestClient(create_gateway(GatewaySettings(IMAGES_BASE=service_url))) as gateway:
            through = gateway.post(UPLOADS, content=two_mb, headers={"content-type": "image/png"})
            generate = gateway.post(
                "/api/images/generate",
                content=b'{"prompt": "' + b"x" * len(two_mb) + b'"}',
                headers={"content-type": "application/json"},
            )

    assert through.status_code == 201, through.text
    assert through.json()["size"] == len(two_mb)
    assert generate.status_code == 413


def test_img2img_from_an_upload_then_from_the_image_it_made(harness: Harness) -> None:
    key = upload(harness.client, encode(picture(165, 100), "JPEG"), "image/jpeg")["key"]

    first = harness.generate(image=key, seed=7, steps=4)
    mask = upload(harness.client, encode(Image.new("L", (165, 100), 255)))["key"]
    inpaint = harness.generate(image=key, mask=mask, strength=0.5, steps=4, width=64, height=64)
    harness.work()

    view = harness.job(first)
    assert view["status"] == "done", view
    image = view["result"]["images"][0]
    # No width/height sent: the input's 165x100, rounded down to multiples of 8.
    assert (image["width"], image["height"]) == (160, 96)
    assert view["progress"] == {"step": 3, "total": 3}  # int(4 steps x 0.75 strength)
    sidecar = json.loads(harness.store.get(image["meta_key"]))
    assert sidecar["request"]["image"] == key and sidecar["request"]["strength"] == 0.75
    assert sidecar["engine_info"]["mode"] == "img2img"
    assert harness.job(inpaint)["status"] == "done"

    again = harness.generate(image=image["key"], strength=0.3, steps=4, width=120)
    harness.work()
    result = harness.job(again)
    assert result["status"] == "done", result
    # Only the width sent: the height keeps the input's aspect ratio (160x96 → 120x72).
    assert (result["result"]["images"][0]["width"], result["result"]["images"][0]["height"]) == (120, 72)


def test_a_lora_through_the_api(harness: Harness) -> None:
    listed = harness.client.get("/api/images/models").json()
    assert [lora["name"] for lora in listed["loras"]] == [TINY_LORA]
    assert listed["loras"][0]["base"] == "sd15" and "path" not in listed["loras"][0]

    job_id = harness.generate(loras=[{"name": TINY_LORA, "weight": 0.7}], steps=4, seed=3)
    harness.work()

    view = harness.job(job_id)
    assert view["status"] == "done", view
    sidecar = json.loads(harness.store.get(view["result"]["meta_key"]))
    assert sidecar["engine_info"]["loras"] == [{"name": TINY_LORA, "weight": 0.7}]


def test_a_rerun_whose_inputs_are_gone_is_refused_at_submit(harness: Harness) -> None:
    image = upload(harness.client, encode(picture(64, 64)))["key"]
    mask = upload(harness.client, encode(Image.new("L", (64, 64), 255)))["key"]
    job_id = harness.generate(image=image, mask=mask, strength=0.5, steps=2, loras=[{"name": TINY_LORA}])
    harness.work()
    key = harness.job(job_id)["result"]["images"][0]["key"]

    def rerun() -> tuple[int, dict]:
        response = harness.client.post("/api/images/rerun", json={"key": key})
        return response.status_code, response.json().get("error", {})

    assert rerun()[0] == 202
    sidecar_key = meta_key_for(key)
    sidecar = harness.store.get(sidecar_key)
    harness.store.put(sidecar_key, sidecar.replace(TINY_LORA.encode(), b"gone-lora"), "application/json")
    status, error = rerun()
    assert (status, error["code"]) == (400, "MODEL_NOT_FOUND") and "gone-lora" in error["message"]
    harness.store.put(sidecar_key, sidecar, "application/json")

    harness.store.delete(mask)
    status, error = rerun()
    assert (status, error["code"], error["detail"]) == (404, "KEY_NOT_FOUND", {"field": "mask", "key": mask})
    harness.store.delete(image)
    status, error = rerun()
    assert (status, error["detail"]["field"]) == (404, "image")
    assert any("Upload it again" in step for step in error["remediation"])


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"image": "uploads/19990101_000000_deadbeef.png"}, 404, "KEY_NOT_FOUND", "no stored image"),
        ({"image": "images/19990101_000000_deadbeef.png"}, 404, "KEY_NOT_FOUND", "no stored image"),
        ({"image": "uploads/../signing.key"}, 400, "VALIDATION_ERROR", "'..'"),
        ({"image": "elsewhere/x.png"}, 400, "VALIDATION_ERROR", "under 'uploads/'"),
        ({"image": "images/x.json"}, 400, "VALIDATION_ERROR", "ends in '.png'"),
        (
            {"image": "UPLOAD", "mask": "images/19990101_000000_deadbeef.png"},
            400,
            "VALIDATION_ERROR",
            "`mask`",
        ),
        (
            {"loras": [{"name": TINY_LORA}], "engine": "invokeai"},
            400,
            "VALIDATION_ERROR",
            "`loras`: engine 'invokeai' does not take it; engines that do: diffusers",
        ),
        ({"image": "UPLOAD", "refiner": True, "model": "tiny-sdxl"}, 400, "VALIDATION_ERROR", "refiner"),
        ({"loras": [{"name": "no-such-lora"}]}, 400, "MODEL_NOT_FOUND", "not registered"),
        ({"loras": [{"name": TINY_LORA}], "engine": "a1111"}, 400, "VALIDATION_ERROR", "`loras`"),
        ({"loras": [{"name": TINY_LORA}, {"name": TINY_LORA}]}, 400, "VALIDATION_ERROR", "more than once"),
        ({"mask": "uploads/x.png"}, 400, "VALIDATION_ERROR", "need `image`"),
    ],
)
def test_inputs_that_cannot_run_are_refused_at_submit(
    harness: Harness, body: dict, status: int, code: str, words: str
) -> None:
    if body.get("image") == "UPLOAD":
        body = {**body, "image": upload(harness.client, encode(picture()))["key"]}

    response = harness.client.post("/api/images/generate", json={"prompt": "a fox", **body})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"]
    assert error["remediation"]
    if code == "MODEL_NOT_FOUND":
        assert any("models.yaml" in hint for hint in error["remediation"])


def test_uploads_need_an_api_key_when_keys_are_on(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(api_keys="s3cret-upload-key")
    data = encode(picture())

    refused = harness.client.post(UPLOADS, content=data, headers={"content-type": "image/png"})
    accepted = harness.client.post(
        UPLOADS, content=data, headers={"content-type": "image/png", "x-api-key": "s3cret-upload-key"}
    )

    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert accepted.status_code == 201

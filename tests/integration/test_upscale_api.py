"""`POST /api/images/upscale` through the images-service against a real Redis, both stores and a real
worker: a stored image made 2 or 4 times larger as a new image whose sidecar names its source, by
Lanczos or by a registered (tiny, real-format) RRDBNet upscaler; refusals as generate answers them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from services.images_service.engines.upscaling import build_tiny_upscaler
from services.images_service.metadata import read_png_text
from services.images_service.storage.keys import meta_key_for
from tests.support.harness import MODEL, Harness

ALICE, BOB = "alice-6f1e0c3b9d2a4e77", "bob-3c8a1f5e7b0d4a22"
API_KEYS = f"{ALICE}:pro, {BOB}:free"


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


def generated(harness: Harness, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A 64×48 image of the fake engine (one flat colour), stored: its sidecar."""
    response = harness.client.post(
        "/api/images/generate",
        json={"prompt": "a red fox", "model": MODEL, "seed": 4242},
        headers=headers or {},
    )
    assert response.status_code == 202, response.text
    harness.work()
    view = harness.client.get(f"/api/images/jobs/{response.json()['job_id']}", headers=headers or {}).json()
    assert view["status"] == "done", view
    return dict(json.loads(harness.store.get(view["result"]["meta_key"])))


def upscale(harness: Harness, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return harness.client.post("/api/images/upscale", json=body, headers=headers or {})


def upscaled(harness: Harness, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upscale, work the queue: the job's view and the new image's sidecar."""
    response = upscale(harness, **body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    harness.work()
    view = harness.job(response.json()["job_id"])
    assert view["status"] == "done", view
    return view, dict(json.loads(harness.store.get(view["result"]["meta_key"])))


def pixels(harness: Harness, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(harness.store.get(key))).convert("RGB"))


def register_upscalers(harness: Harness, **files: Any) -> None:
    """Add `name=(path, scale)` entries under models.yaml's ``upscalers:`` (the registry re-reads it)."""
    models_yaml = harness.settings.models_yaml
    data = yaml.safe_load(models_yaml.read_text())
    data["upscalers"] = {name: {"path": str(path), "scale": scale} for name, (path, scale) in files.items()}
    models_yaml.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("scale", [2, 4])
def test_an_image_upscaled_is_a_new_image_pointing_at_its_source(harness: Harness, scale: int) -> None:
    source = generated(harness)

    view, sidecar = upscaled(harness, key=source["png_key"], scale=scale)

    assert view["progress"] == {"step": 1, "total": 1}
    key = view["result"]["png_key"]
    assert key != source["png_key"] and sidecar["png_key"] == key
    assert sidecar["source"] == source["png_key"]
    assert (sidecar["width"], sidecar["height"]) == (64 * scale, 48 * scale)
    assert view["result"]["images"][0]["width"] == 64 * scale
    request = sidecar["request"]
    assert request["upscale"] == {"source": source["png_key"], "scale": scale, "model": None}
    assert (request["prompt"], request["model"], request["num_images"]) == ("a red fox", MODEL, 1)
    assert sidecar["seed"] == source["seed"] == 4242
    big, small = pixels(harness, key), pixels(harness, source["png_key"])
    assert big.shape == (48 * scale, 64 * scale, 3)
    assert np.abs(big.astype(int) - small[0, 0].astype(int)).max() <= 1  # Lanczos keeps a flat colour
    parameters = read_png_text(harness.store.get(key))["parameters"]
    assert f"Postprocess upscale by: {scale}, Postprocess upscaler: Lanczos" in parameters
    assert "Steps:" not in parameters and f"Size: {64 * scale}x{48 * scale}" in parameters
    # The source is untouched; the gallery lists both, the upscale first.
    assert pixels(harness, source["png_key"]).shape == (48, 64, 3)
    items = harness.client.get("/api/images/latest").json()["items"]
    assert [item["key"] for item in items] == [key, source["png_key"]]
    assert harness.engine.calls and len(harness.engine.calls) == 1  # the engine rendered only the source


def test_a_registered_upscaler_runs_its_network(harness: Harness) -> None:
    folder = harness.settings.data_dir / "upscalers"
    register_upscalers(
        harness,
        tiny_x2=(build_tiny_upscaler(folder / "tiny_x2.safetensors", 2), 2),
        tiny_x4=(build_tiny_upscaler(folder / "tiny_x4.safetensors", 4), 4),
    )
    source = generated(harness)
    lanczos = np.asarray(
        Image.fromarray(pixels(harness, source["png_key"])).resize((256, 192), Image.Resampling.LANCZOS)
    )

    # No `model`: the registered one of the asked scale.
    view, sidecar = upscaled(harness, key=source["png_key"], scale=4)
    assert sidecar["request"]["upscale"]["model"] == "tiny_x4"
    assert sidecar["engine_info"]["upscaler"] == "tiny_x4"
    by_default = pixels(harness, view["result"]["png_key"])
    assert by_default.shape == (192, 256, 3)
    assert not np.array_equal(by_default, lanczos)
    assert (
        "Postprocess upscaler: tiny_x4"
        in read_png_text(harness.store.get(view["result"]["png_key"]))["parameters"]
    )

    # Named: an x2 network asked for x4 comes out at x4 (its output resampled to the exact size).
    view, sidecar = upscaled(harness, key=source["png_key"], scale=4, model="tiny_x2")
    assert sidecar["request"]["upscale"]["model"] == "tiny_x2"
    assert pixels(harness, view["result"]["png_key"]).shape == (192, 256, 3)

    # The same upscale twice gives the same pixels.
    again, _ = upscaled(harness, key=source["png_key"], scale=4)
    assert np.array_equal(pixels(harness, again["result"]["png_key"]), by_default)


def test_an_unknown_or_missing_source_or_upscaler_is_refused(harness: Harness) -> None:
    missing = upscale(harness, key="images/19990101_000000_deadbeef.png", scale=2)
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "KEY_NOT_FOUND"

    key = generated(harness)["png_key"]
    unknown = upscale(harness, key=key, scale=2, model="nope")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "MODEL_NOT_FOUND"

    harness.store.delete(meta_key_for(key))
    no_sidecar = upscale(harness, key=key, scale=2)
    assert no_sidecar.status_code == 400 and "no sidecar" in no_sidecar.json()["error"]["message"]


def test_a_source_deleted_before_the_job_runs_fails_the_job_with_its_code(harness: Harness) -> None:
    key = generated(harness)["png_key"]
    response = upscale(harness, key=key, scale=2)
    assert response.status_code == 202
    harness.store.delete(key)
    harness.work()
    view = harness.job(response.json()["job_id"])
    assert view["status"] == "error" and view["error"]["code"] == "KEY_NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [
        {"scale": 2},
        {"key": "images/x.png", "scale": 3},
        {"key": "images/x.png", "scale": "two"},
        {"key": "images/x.png", "colour": "red"},
        {"key": "images/../signing.key"},
        {"key": "images/x.json"},
    ],
)
def test_a_malformed_request_is_refused_as_generate_refuses_it(harness: Harness, body: dict) -> None:
    response = harness.client.post("/api/images/upscale", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def test_bad_json_and_other_media_types_are_refused(harness: Harness) -> None:
    broken = harness.client.post(
        "/api/images/upscale", content=b'{"key": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "VALIDATION_ERROR"
    form = harness.client.post(
        "/api/images/upscale", content=b"key=x", headers={"Content-Type": "text/plain"}
    )
    assert form.status_code == 415


def test_only_a_key_that_sees_the_image_may_upscale_it_within_its_tier(
    harness_with: Callable[..., Harness],
) -> None:
    harness = harness_with(api_keys=API_KEYS, max_side=256)
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    key = generated(harness, alice)["png_key"]

    stolen = upscale(harness, bob, key=key, scale=2)
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "KEY_NOT_FOUND"
    never = upscale(harness, bob, key="images/19990101_000000_deadbeef.png", scale=2)
    assert stolen.json()["error"]["message"].replace(key, "K") == never.json()["error"]["message"].replace(
        "images/19990101_000000_deadbeef.png", "K"
    )

    # 64×48 × 4 fits IMAGES_MAX_SIDE=256; an upscale of that to 512 does not.
    response = upscale(harness, alice, key=key, scale=4)
    assert response.status_code == 202, response.text
    harness.work()
    view = harness.client.get(f"/api/images/jobs/{response.json()['job_id']}", headers=alice).json()
    assert view["status"] == "done", view
    big = view["result"]["png_key"]
    assert (
        json.loads(harness.store.get(meta_key_for(big)))["owner"]
        == json.loads(harness.store.get(meta_key_for(key)))["owner"]
    )
    refused = upscale(harness, alice, key=big, scale=2)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["detail"]["limit"] == "size"

    replay = {**alice, "Idempotency-Key": "upscale-1"}
    once, twice = (upscale(harness, replay, key=key, scale=2) for _ in range(2))
    assert once.status_code == twice.status_code == 202
    assert once.json()["job_id"] == twice.json()["job_id"]
    assert twice.headers["idempotent-replayed"] == "true"

"""Presets, quality levels, A1111 scheduler names and re-runs through the images-service API, against
a real Redis and the filesystem store: a fake engine shows what was resolved; the tiny diffusers
pipeline shows that a re-run with the same seed gives the same pixels."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.images_service.app import create_app
from services.images_service.metadata import read_png_text
from services.images_service.models import ModelRegistry
from services.images_service.presets import PRESETS
from services.images_service.storage.keys import meta_key_for
from tests.support.harness import Harness
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers_engine import DiffusersEngine

FREE_KEY = "free-1a2b3c4d5e6f7a8b"
PRO_KEY = "pro-9f8e7d6c5b4a3f2e"
API_KEYS = f"{FREE_KEY}:free, {PRO_KEY}:pro"

SMALL = {"width": 64, "height": 64}
"""A preset's own size is SDXL's scale; tests on tiny pipelines ask for a small one."""


@pytest.fixture
def harness(harness_with: Callable[..., Harness]) -> Harness:
    return harness_with()


def rendered(harness: Harness, **body: Any) -> dict[str, Any]:
    """Generate, work the queue, and return the rendered image's sidecar (a preset with steps makes
    a pipeline: its generate step's image, before the post-processing)."""
    job_id = harness.generate(**body)
    harness.work()
    view = harness.job(job_id)
    assert view["status"] == "done", view
    result = view["steps"][0]["result"] if view.get("steps") else view["result"]
    return dict(json.loads(harness.store.get(result["meta_key"])))


def rerun(harness: Harness, key: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return harness.client.post("/api/images/rerun", json={"key": key, **body}, headers=headers or {})


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# --- presets and quality levels -----------------------------------------------------------------
def test_presets_are_listed_with_templates_sizes_and_quality_levels(harness: Harness) -> None:
    response = harness.client.get("/api/images/presets")
    assert response.status_code == 200
    presets = {p["name"]: p for p in response.json()["presets"]}
    assert {"photoreal", "cinematic", "product", "illustration", "storyboard"} <= set(presets)
    for preset in presets.values():
        assert preset["title"] and preset["description"] and preset["negative_prompt"]
        assert preset["prompt_template"].count("{prompt}") == 1
        assert preset["defaults"]["width"] % 8 == 0 and preset["defaults"]["height"] % 8 == 0
        assert preset["defaults"]["quality"] in ("low", "standard", "pro")
        assert preset["qualities"] == {
            "low": {"steps": 20, "cfg": 6.0},
            "standard": {"steps": 30, "cfg": 7.0},
            "pro": {"steps": 50, "cfg": 8.0},
        }
    assert "plastic skin" in presets["photoreal"]["negative_prompt"]
    # Film grain and tone mapping are done to the pixels after the render, not asked for in words.
    [post] = presets["cinematic"]["steps"]
    assert post["kind"] == "postprocess"
    ops = [op["op"] for op in post["ops"]]
    assert ops[0] == "tone_map" and "film_grain" in ops
    assert "grain" not in presets["cinematic"]["prompt_template"]
    identity = presets["identity_lock"]
    assert identity["requires_consent"] and identity["inputs"]["reference_image"]["required"]
    assert {mode["code"] for mode in identity["failure_modes"]} >= {"CONSENT_MISSING"}
    assert presets["photoreal"]["engines"][0] == "diffusers" and presets["photoreal"]["safety_notes"]


def test_a_preset_wraps_the_prompt_and_fills_what_the_request_left_unset(harness: Harness) -> None:
    sidecar = rendered(harness, prompt="an old fisherman mending a net", preset="photoreal")

    photoreal = PRESETS["photoreal"]
    request = sidecar["request"]
    assert request["prompt"] == photoreal.apply("an old fisherman mending a net")
    assert request["prompt"].startswith("RAW photo, an old fisherman mending a net, natural skin")
    assert request["negative_prompt"] == photoreal.negative_prompt
    assert (request["width"], request["height"]) == (photoreal.width, photoreal.height)
    assert (request["steps"], request["cfg"]) == (30, 7.0)
    assert (request["preset"], request["quality"]) == ("photoreal", "standard")
    assert (sidecar["width"], sidecar["height"]) == (photoreal.width, photoreal.height)
    assert harness.engine.calls[0].prompt == request["prompt"]

    item = harness.client.get("/api/images/latest").json()["items"][0]
    assert (item["preset"], item["quality"]) == ("photoreal", "standard")
    assert item["prompt"] == request["prompt"]


def test_the_request_wins_over_the_quality_level_and_the_preset(harness: Harness) -> None:
    request = rendered(
        harness,
        prompt="a neon alley",
        preset="cinematic",
        quality="pro",
        negative_prompt="fog",
        steps=5,
        cfg=3.5,
        **SMALL,
    )["request"]
    assert (request["steps"], request["cfg"]) == (5, 3.5)
    assert request["negative_prompt"] == "fog"
    assert (request["width"], request["height"]) == (64, 64)
    assert request["prompt"].startswith("cinematic film still, a neon alley,")
    assert request["quality"] == "pro"


@pytest.mark.parametrize(
    ("quality", "steps", "cfg"), [("low", 20, 6.0), ("standard", 30, 7.0), ("pro", 50, 8.0)]
)
def test_quality_without_a_preset_sets_steps_and_cfg_only(
    harness: Harness, quality: str, steps: int, cfg: float
) -> None:
    request = rendered(harness, prompt="a red fox", quality=quality)["request"]
    assert (request["steps"], request["cfg"]) == (steps, cfg)
    assert request["prompt"] == "a red fox" and request["negative_prompt"] == ""
    assert (request["width"], request["height"]) == (64, 48)  # the model's default size
    assert request["preset"] is None and request["quality"] == quality


def test_a_presets_own_quality_is_its_default(harness: Harness) -> None:
    beats = ["they wait", "the bus comes"]
    request = rendered(harness, prompt="at a bus stop", preset="storyboard", beats=beats, **SMALL)["request"]
    assert (request["quality"], request["steps"], request["cfg"]) == ("low", 20, 6.0)  # the first shot's


def test_an_unknown_preset_is_refused_with_the_list(harness: Harness) -> None:
    response = harness.client.post("/api/images/generate", json={"prompt": "x", "preset": "vaporwave"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and "vaporwave" in error["message"]
    assert all(name in error["remediation"][0] for name in PRESETS)
    assert error["detail"][0]["field"] == "preset"


def test_a_raw_workflow_takes_no_preset(harness: Harness) -> None:
    workflow = {"1": {"class_type": "KSampler", "inputs": {"steps": 4}}}
    body = {"prompt": "x", "engine": "comfyui", "workflow": workflow, "preset": "cinematic"}
    response = harness.client.post("/api/images/generate", json=body)
    assert response.status_code == 400 and "workflow" in response.json()["error"]["message"]


def test_tier_ceilings_apply_to_the_resolved_quality(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(api_keys=API_KEYS)
    free = {"X-API-Key": FREE_KEY}
    body = {"prompt": "a red fox", "preset": "product", "quality": "pro"}

    response = harness.client.post("/api/images/generate", json=body, headers=free)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"] == "tier 'free' allows at most 30 steps; this request asks for 50"
    assert error["detail"] == {"tier": "free", "limit": "steps", "allowed": 30, "requested": 50}
    assert any("lower quality" in step for step in error["remediation"])
    standard = {**body, "quality": "standard"}
    assert harness.client.post("/api/images/generate", json=standard, headers=free).status_code == 202
    pro = {"X-API-Key": PRO_KEY}
    assert harness.client.post("/api/images/generate", json=body, headers=pro).status_code == 202


# --- scheduler names --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "recorded", "sampler"),
    [
        ("DPM++ 2M Karras", "dpmpp_2m_karras", "Sampler: DPM++ 2M, Schedule type: Karras"),
        ("Euler a", "euler_a", "Sampler: Euler a,"),
        ("dpm++ 2m", "dpmpp_2m", "Sampler: DPM++ 2M,"),
        ("DDIM", "ddim", "Sampler: DDIM,"),
        ("UniPC", "unipc", "Sampler: UniPC,"),
        ("PLMS", "pndm", "Sampler: PLMS,"),
        ("euler", "euler", "Sampler: Euler,"),
    ],
)
def test_a1111_scheduler_names_are_accepted_and_recorded_as_ours(
    harness: Harness, sent: str, recorded: str, sampler: str
) -> None:
    sidecar = rendered(harness, scheduler=sent)
    assert sidecar["request"]["scheduler"] == recorded
    assert harness.engine.calls[0].scheduler == recorded
    assert harness.client.get("/api/images/latest").json()["items"][0]["scheduler"] == recorded
    parameters = read_png_text(harness.store.get(sidecar["png_key"]))["parameters"]
    assert sampler in parameters


# --- re-run -----------------------------------------------------------------------------------------
def test_rerun_enqueues_the_stored_request_again(harness: Harness) -> None:
    original = rendered(harness, prompt="a lighthouse", preset="illustration", seed=77, steps=3, **SMALL)

    response = rerun(harness, original["png_key"])

    assert response.status_code == 202 and response.json()["status"] == "queued"
    harness.work()
    view = harness.job(response.json()["job_id"])
    assert view["status"] == "done"
    again = json.loads(harness.store.get(view["result"]["meta_key"]))
    assert again["request"] == original["request"]  # the template is not applied a second time
    assert again["png_key"] != original["png_key"] and again["seed"] == 77
    first, second = harness.engine.calls
    assert first == second


def test_rerun_with_a_seed_or_a_new_seed_changes_only_the_seed(harness: Harness) -> None:
    original = rendered(harness, prompt="a lighthouse", seed=77, steps=3)
    specs = []
    for body in ({"seed": 5}, {"new_seed": True}):
        assert rerun(harness, original["png_key"], **body).status_code == 202
        harness.work()
        specs.append(harness.engine.calls[-1])
    chosen, fresh = specs
    assert chosen.seed == 5 and fresh.seed != 77
    stored = original["request"]
    for spec in specs:
        assert {**spec.model_dump(mode="json"), "seed": None} == {**stored, "seed": None}
    latest = harness.client.get("/api/images/latest").json()["items"]
    assert latest[0]["seed"] == fresh.seed and latest[1]["seed"] == 5


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"key": "images/19990101_000000_deadbeef.png"}, 404, "KEY_NOT_FOUND"),
        ({"key": "images/../signing.key"}, 400, "VALIDATION_ERROR"),
        ({"key": "other/19990101_000000_deadbeef.png"}, 400, "VALIDATION_ERROR"),
        ({"key": "images/x.json"}, 400, "VALIDATION_ERROR"),
        ({}, 400, "VALIDATION_ERROR"),
        ({"key": "images/x.png", "seed": -1}, 400, "VALIDATION_ERROR"),
        ({"key": "images/x.png", "colour": "red"}, 400, "VALIDATION_ERROR"),
    ],
)
def test_rerun_refuses_bad_or_unknown_keys(harness: Harness, body: dict, status: int, code: str) -> None:
    response = harness.client.post("/api/images/rerun", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_rerun_refuses_a_seed_and_a_new_seed_together(harness: Harness) -> None:
    key = rendered(harness)["png_key"]
    response = rerun(harness, key, seed=1, new_seed=True)
    assert response.status_code == 400 and "not both" in response.json()["error"]["message"]


def test_rerun_of_an_image_without_a_sidecar_says_why(harness: Harness) -> None:
    key = rendered(harness)["png_key"]
    harness.store.delete(meta_key_for(key))
    response = rerun(harness, key)
    assert response.status_code == 400
    assert "no sidecar" in response.json()["error"]["message"]


def test_rerun_of_a_model_since_removed_is_refused_at_once(harness: Harness, tmp_path: Path) -> None:
    key = rendered(harness)["png_key"]
    sidecar = json.loads(harness.store.get(meta_key_for(key)))
    sidecar["request"]["model"] = "gone-model"
    harness.store.put(meta_key_for(key), json.dumps(sidecar).encode(), "application/json")
    response = rerun(harness, key)
    assert response.status_code == 400 and response.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_rerun_checks_the_callers_tier_and_honours_idempotency(harness_with: Callable[..., Harness]) -> None:
    harness = harness_with(api_keys=API_KEYS)
    pro = {"X-API-Key": PRO_KEY}
    harness.client.headers.update(pro)  # the job views need a key too
    response = harness.client.post(
        "/api/images/generate", json={"prompt": "a fox", "quality": "pro", **SMALL}
    )
    assert response.status_code == 202
    harness.work()
    key = harness.job(response.json()["job_id"])["result"]["png_key"]

    # Another key may not re-run it at all; the same key, moved down to free, is held to free's ceilings.
    assert rerun(harness, key, headers={"X-API-Key": FREE_KEY}).status_code == 404
    downgraded = harness.settings.model_copy(update={"api_keys": f"{PRO_KEY}:free"})
    with TestClient(create_app(downgraded, store=harness.store)) as client:
        refused = client.post("/api/images/rerun", json={"key": key}, headers=pro)
    assert refused.status_code == 400
    detail = refused.json()["error"]["detail"]
    assert detail == {"tier": "free", "limit": "steps", "allowed": 30, "requested": 50}

    once = rerun(harness, key, headers={**pro, "Idempotency-Key": "rerun-1"}, new_seed=True)
    twice = rerun(harness, key, headers={**pro, "Idempotency-Key": "rerun-1"}, new_seed=True)
    assert once.status_code == twice.status_code == 202
    assert once.json()["job_id"] == twice.json()["job_id"]
    assert twice.headers["idempotent-replayed"] == "true"
    other = rerun(harness, key, headers={**pro, "Idempotency-Key": "rerun-1"})
    assert other.status_code == 409


def test_rerun_with_the_same_seed_gives_the_same_pixels_on_the_tiny_pipeline(
    harness_with: Callable[..., Harness],
    tiny_models: Path,  # noqa: F811
) -> None:
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    harness = harness_with(engine, models_yaml=tiny_models)
    try:
        original = rendered(
            harness,
            prompt="a paper boat",
            model="tiny-sd15",
            preset="cinematic",
            quality="low",
            scheduler="DPM++ 2M Karras",
            steps=6,
            seed=4321,
            **SMALL,
        )
        keys = []
        for body in ({}, {"new_seed": True}):
            response = rerun(harness, original["png_key"], **body)
            assert response.status_code == 202, response.text
            harness.work()
            view = harness.job(response.json()["job_id"])
            assert view["status"] == "done", view
            keys.append(view["result"]["png_key"])
    finally:
        engine.close()

    same, new = (decoded(harness.store.get(key)) for key in keys)
    first = decoded(harness.store.get(original["png_key"]))
    assert np.array_equal(first, same)
    assert not np.array_equal(first, new)
    assert json.loads(harness.store.get(meta_key_for(keys[1])))["seed"] != 4321
    assert original["request"]["scheduler"] == "dpmpp_2m_karras"
    assert (original["request"]["preset"], original["request"]["steps"]) == ("cinematic", 6)

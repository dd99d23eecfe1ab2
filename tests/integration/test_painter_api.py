"""HIP-35's Painter API over the images queue (real Redis, a fake engine in a real worker): a Painter
request answers the images' URLs, seeds and usage; its control and reference pictures become the
job's `controls` and `reference_image`; it is refused like a generate (400 VALIDATION_ERROR), and its
job belongs to the key that made it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.contracts import CONTROL_TYPES, RenderSpec
from services.contracts.schema import MAX_IMAGES
from services.images_service.api.painter import DEFAULT_NEGATIVE_PROMPT
from services.images_service.errors import EngineError
from services.images_service.models import register_addon
from services.images_service.presets import PRESETS
from tests.support.fakes import FakeEngine
from tests.support.guide_models import write_guide_models
from tests.support.harness import Harness
from tests.support.pictures import left_half, two_tone, upload_picture
from tests.support.workers import idle_worker

PRO_KEY = "pro-0f3e6a8b2c4d4e11"
OTHER_KEY = "ent-5a9c3e7f1b2d4c88"

# SEEDS.md §2 (HIP-35, condensed) lists the Painter request's fields and defaults but quotes no JSON
# body verbatim; this is that request with every field it names and HIP-35's defaults written out:
# width/height 1024, cfg_scale 7.0, seed −1 (random), a style preset, num_images 1–4.
HIP35_REQUEST: dict[str, Any] = {
    "prompt": "a cozy cabin in a snowy forest at night, warm light in the windows",
    "negative_prompt": "blurry, low quality",
    "model": "sdxl_base",
    "width": 1024,
    "height": 1024,
    "steps": 30,
    "cfg_scale": 7.0,
    "seed": -1,
    "style": "cinematic",
    "num_images": 2,
}


@pytest.fixture
def painter(harness_with: Callable[..., Harness], tmp_path: Path) -> Harness:
    return harness_with(models_yaml=write_guide_models(tmp_path))


def paint_waiting(harness: Harness, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    """POST /api/painter/generate as a client does (it waits for its job) while this thread works
    the queue: RQ's worker wants the main thread, so the waiting call runs beside it. An idle
    registered worker makes the engine look served, as a running `images-worker` does."""
    answers: list[httpx.Response] = []
    call = threading.Thread(
        target=lambda: answers.append(harness.client.post("/api/painter/generate", json=body, **kwargs))
    )
    with idle_worker(harness.settings, "diffusers"):
        call.start()
        deadline = time.monotonic() + 20
        while call.is_alive() and time.monotonic() < deadline:
            harness.work()
            time.sleep(0.05)
        call.join(timeout=5)
    assert answers, "the Painter call did not answer"
    return answers[0]


def test_hip35_request_answers_the_images_with_urls_seeds_and_usage(painter: Harness) -> None:
    response = paint_waiting(painter, HIP35_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and set(body) == {
        "job_id",
        "status",
        "images",
        "usage",
        "waiting_for",
        "error",
    }
    assert body["waiting_for"] is None and body["error"] is None
    job_id = body["job_id"]

    (spec,) = painter.engine.calls
    assert (spec.model, spec.width, spec.height, spec.steps, spec.cfg, spec.num_images) == (
        "sdxl_base",
        1024,
        1024,
        30,
        7.0,
        2,
    )
    assert spec.preset == "cinematic" and spec.prompt == PRESETS["cinematic"].apply(HIP35_REQUEST["prompt"])
    assert spec.negative_prompt == "blurry, low quality"

    images = body["images"]
    assert [image["seed"] for image in images] == [spec.seed, spec.seed + 1]
    for image in images:
        assert image["workflow_id"] == job_id
        assert (image["width"], image["height"], image["size"]) == (1024, 1024, "1024x1024")
        downloaded = painter.client.get(image["url"])
        assert downloaded.status_code == 200 and downloaded.content == painter.store.get(image["key"])
    assert images[0]["key"] == painter.job(job_id)["result"]["png_key"]

    usage = body["usage"]
    # The cinematic style is a pipeline (its post-processing a step): compute is every step's.
    steps = painter.job(job_id)["steps"]
    assert [step["kind"] for step in steps] == ["generate", "postprocess"]
    spent = [
        json.loads(painter.store.get(step["result"]["meta_key"]))["timings"]["total_s"] for step in steps
    ]
    assert usage == {
        "model": "sdxl_base",
        "steps": 30,
        "compute_ms": sum(round(seconds * 1000) for seconds in spent),
    }
    # The same job is on the images API and in its history: one queue, not a second pipeline.
    assert painter.client.get("/api/images/jobs").json()["jobs"][0]["job_id"] == job_id


def test_defaults_quality_negatives_and_a_random_seed(painter: Harness) -> None:
    response = paint_waiting(painter, {"prompt": "a lighthouse"})
    assert response.status_code == 200, response.text
    (spec,) = painter.engine.calls
    assert spec.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert (spec.model, spec.width, spec.height) == ("sdxl_base", 1024, 1024)
    assert 0 <= spec.seed < 2**32 and response.json()["images"][0]["seed"] == spec.seed


def test_a_style_brings_its_own_negatives_and_an_empty_one_asks_for_none(painter: Harness) -> None:
    for body in ({"prompt": "a fox", "style": "photoreal"}, {"prompt": "a fox", "negative_prompt": ""}):
        response = painter.client.post("/api/painter/generate", json=body, params={"wait": 0})
        assert response.status_code == 202, response.text
    painter.work()
    styled, bare = painter.engine.calls
    assert styled.negative_prompt == PRESETS["photoreal"].negative_prompt
    assert bare.negative_prompt == ""


def test_with_no_worker_for_its_engine_the_call_answers_202_at_once(painter: Harness) -> None:
    started = time.monotonic()
    response = painter.client.post("/api/painter/generate", json={"prompt": "a fox"})
    assert response.status_code == 202 and time.monotonic() - started < 5
    assert "start one with" in response.json()["waiting_for"]


def test_a_job_still_running_answers_202_then_polls_to_the_painter_response(painter: Harness) -> None:
    response = painter.client.post(
        "/api/painter/generate", json={"prompt": "a fox", "seed": 7}, params={"wait": 0}
    )
    assert response.status_code == 202, response.text
    pending = response.json()
    assert pending["status"] == "queued" and pending["images"] == [] and pending["usage"] is None
    assert "none serves engine 'diffusers'" in pending["waiting_for"]
    job_id = pending["job_id"]
    assert painter.client.get(f"/api/painter/jobs/{job_id}").status_code == 202

    painter.work()

    done = painter.client.get(f"/api/painter/jobs/{job_id}")
    assert done.status_code == 200, done.text
    assert [image["seed"] for image in done.json()["images"]] == [7]
    assert done.json()["images"][0]["workflow_id"] == job_id


@pytest.fixture
def guided_painter(harness_with: Callable[..., Harness], tmp_path: Path) -> Harness:
    """A Painter service whose models.yaml registers a ControlNet of each type and an IP-Adapter."""
    models_yaml = write_guide_models(tmp_path)
    for control_type in CONTROL_TYPES:
        register_addon(
            models_yaml,
            "controlnets",
            f"{control_type}-xl",
            {"path": f"cn/{control_type}", "type": control_type},
        )
    register_addon(
        models_yaml, "ip_adapters", "ip-xl", {"path": "ip/ip.safetensors", "image_encoder": "ip/encoder"}
    )
    return harness_with(models_yaml=models_yaml)


def stored_spec(harness: Harness, job_id: str) -> RenderSpec:
    """What the queue holds for the job: the spec the worker renders and the sidecar records."""
    queue = harness.client.app.state.queue
    spec: RenderSpec = queue.spec_of(queue.fetch(job_id))
    return spec


def test_a_control_image_and_type_become_the_jobs_control_and_a_reference_its_reference(
    guided_painter: Harness,
) -> None:
    edges = upload_picture(guided_painter.client, left_half().convert("RGB"))
    face = upload_picture(guided_painter.client, two_tone())
    body = {
        "prompt": "a fox",
        "control_image": edges,
        "control_type": "scribble",
        "reference_image": face,
        "consent": True,
    }

    response = guided_painter.client.post("/api/painter/generate", json=body, params={"wait": 0})

    assert response.status_code == 202, response.text
    spec = stored_spec(guided_painter, response.json()["job_id"])
    assert [(c.image, c.type, c.model, c.weight, c.start, c.end) for c in spec.controls] == [
        (edges, "scribble", "scribble-xl", 1.0, 0.0, 1.0)  # the wire's defaults, its registered ControlNet
    ]
    assert (spec.reference_image, spec.reference_model, spec.consent) == (face, "ip-xl", True)


def test_the_identity_lock_style_takes_the_reference_with_consent_and_refuses_it_without(
    guided_painter: Harness,
) -> None:
    face = upload_picture(guided_painter.client, two_tone())
    body = {"prompt": "as an astronaut", "style": "identity_lock", "reference_image": face}

    refused = guided_painter.client.post("/api/painter/generate", json=body)
    accepted = guided_painter.client.post(
        "/api/painter/generate", json={**body, "consent": True}, params={"wait": 0}
    )

    assert refused.status_code == 400 and refused.json()["error"]["code"] == "CONSENT_MISSING"
    assert accepted.status_code == 202, accepted.text
    spec = stored_spec(guided_painter, accepted.json()["job_id"])
    assert (spec.preset, spec.reference_image, spec.consent) == ("identity_lock", face, True)


@pytest.mark.parametrize(
    ("extra", "given", "missing"),
    [
        ({"control_image": "uploads/edges.png"}, "control_image", "control_type"),
        ({"control_type": "depth"}, "control_type", "control_image"),
    ],
)
def test_half_a_control_is_a_400_naming_the_missing_field(
    painter: Harness, extra: dict[str, Any], given: str, missing: str
) -> None:
    response = painter.client.post("/api/painter/generate", json={"prompt": "a fox", **extra})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"].startswith(f"`{given}` needs `{missing}`")
    assert [problem["field"] for problem in error["detail"]] == [missing]
    assert "control_type" in error["remediation"][0] and "canny" in error["remediation"][0]
    assert painter.engine.calls == []


def test_a_control_image_that_was_never_uploaded_is_refused_before_queueing(guided_painter: Harness) -> None:
    never_uploaded = "uploads/2026/12/07/0123456789abcdef0123456789abcdef.png"
    body = {"prompt": "a fox", "control_image": never_uploaded, "control_type": "canny"}

    response = guided_painter.client.post("/api/painter/generate", json=body)

    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "KEY_NOT_FOUND" and error["message"].startswith("`controls[0].image`")
    assert guided_painter.client.get("/api/images/jobs").json()["jobs"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "seed": -2}, "seed"),
        ({"prompt": "x", "num_images": MAX_IMAGES + 1}, "num_images"),
        ({"prompt": "x", "cfg": 7}, "cfg"),
        ({"prompt": "x", "width": 1001}, "width"),
        ({"prompt": "x", "control_type": "sketch"}, "control_type"),
        ({"prompt": "x", "control_image": ""}, "control_image"),
        ({"prompt": "x", "reference_image": ""}, "reference_image"),
        ({"prompt": " "}, "prompt"),
    ],
)
def test_bad_painter_input_is_a_400_with_its_field(
    painter: Harness, body: dict[str, Any], field: str
) -> None:
    response = painter.client.post("/api/painter/generate", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert any(f["field"] == field for f in error["detail"]), error


def test_an_unknown_style_is_refused_with_the_styles(painter: Harness) -> None:
    response = painter.client.post("/api/painter/generate", json={"prompt": "x", "style": "vaporwave"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert all(name in error["message"] for name in PRESETS) and error["detail"]["styles"] == list(PRESETS)


def test_an_unknown_model_is_refused_as_on_generate(painter: Harness) -> None:
    response = painter.client.post("/api/painter/generate", json={"prompt": "x", "model": "sdxl_bse"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_a_painter_job_belongs_to_its_key(harness_with: Callable[..., Harness], tmp_path: Path) -> None:
    secured = harness_with(
        models_yaml=write_guide_models(tmp_path), api_keys=f"{PRO_KEY}:pro, {OTHER_KEY}:enterprise"
    )
    body = {"prompt": "a fox"}
    assert secured.client.post("/api/painter/generate", json=body).status_code == 401
    mine = secured.client.post(
        "/api/painter/generate", json=body, params={"wait": 0}, headers={"X-API-Key": PRO_KEY}
    )
    assert mine.status_code == 202, mine.text
    job_id = mine.json()["job_id"]
    secured.work()

    theirs = secured.client.get(f"/api/painter/jobs/{job_id}", headers={"X-API-Key": OTHER_KEY})
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert (
        secured.client.get(f"/api/images/jobs/{job_id}", headers={"X-API-Key": OTHER_KEY}).status_code == 404
    )
    own = secured.client.get(f"/api/painter/jobs/{job_id}", headers={"X-API-Key": PRO_KEY})
    assert own.status_code == 200 and len(own.json()["images"]) == 1


def test_the_free_tiers_ceilings_apply_to_painter_requests(
    harness_with: Callable[..., Harness], tmp_path: Path
) -> None:
    free_key = "free-7c1d0b9e4a2f48d6"
    secured = harness_with(models_yaml=write_guide_models(tmp_path), api_keys=f"{free_key}:free")
    response = secured.client.post(
        "/api/painter/generate", json={"prompt": "a fox", "num_images": 4}, headers={"X-API-Key": free_key}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["detail"]["limit"] == "num_images"
    assert secured.engine.calls == []


def test_a_failed_job_answers_its_status_and_error(
    harness_with: Callable[..., Harness], tmp_path: Path
) -> None:
    failing = harness_with(
        FakeEngine(fail_with=EngineError("the GPU fell over")), models_yaml=write_guide_models(tmp_path)
    )
    job_id = failing.client.post("/api/painter/generate", json={"prompt": "x"}, params={"wait": 0}).json()[
        "job_id"
    ]
    failing.work()
    response = failing.client.get(f"/api/painter/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "error"
    assert response.json()["images"] == []
    assert (
        response.json()["error"]["code"] == "ENGINE_ERROR"
        and "GPU fell over" in response.json()["error"]["message"]
    )

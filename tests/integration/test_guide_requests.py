"""The KITTY guide's requests work as written: each body below is sent as is to
`POST /api/images/generate` (real Redis, a fake engine in a real worker) and queued, with every field
meaning what it means in the guide — `"refiner": null` is "no refiner pass", not a 400."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.guide_models import write_guide_models
from tests.support.harness import Harness

# SEEDS.md §1 (the KITTY × Stable Diffusion guide, condensed) quotes no JSON bodies verbatim; these
# are the requests its text describes, in its own field and model names: the seed field list
# (prompt, negative_prompt, width, height, steps, cfg, seed, model, refiner, scheduler, num_images,
# engine), MODELS_YAML's `sdxl_base`/`sdxl_refiner`/`sd15_base`, "SDXL 1024×1024 default, an
# optional short refiner pass; SD 1.5 with Euler a", and the CLI's `images.generate "<prompt>"`.
GUIDE_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("prompt only (images.generate)", {"prompt": "a red fox in the snow, golden hour"}),
    (
        "SDXL 1024x1024, refiner off as null",
        {
            "prompt": "a red fox in the snow, golden hour",
            "negative_prompt": "",
            "width": 1024,
            "height": 1024,
            "steps": 30,
            "cfg": 7.0,
            "seed": None,
            "model": "sdxl_base",
            "refiner": None,
        },
    ),
    (
        "SDXL with the short refiner pass",
        {"prompt": "a lighthouse at dusk", "model": "sdxl_base", "refiner": True, "seed": 42},
    ),
    (
        "SDXL naming its refiner",
        {"prompt": "a lighthouse at dusk", "model": "sdxl_base", "refiner": "sdxl_refiner"},
    ),
    ("refiner off as false", {"prompt": "a lighthouse at dusk", "model": "sdxl_base", "refiner": False}),
    (
        "SD 1.5 with Euler a",
        {
            "prompt": "a watercolor of a cat",
            "model": "sd15_base",
            "scheduler": "Euler a",
            "width": 512,
            "height": 512,
            "steps": 25,
            "cfg": 7.5,
            "refiner": None,
        },
    ),
    (
        "every seed field",
        {
            "prompt": "a red fox in the snow",
            "negative_prompt": "blurry, low quality",
            "width": 1024,
            "height": 1024,
            "steps": 30,
            "cfg": 7.0,
            "seed": 1234,
            "model": "sdxl_base",
            "refiner": None,
            "scheduler": "euler_a",
            "num_images": 2,
            "engine": "diffusers",
        },
    ),
]


@pytest.fixture
def guide(harness_with: Callable[..., Harness], tmp_path: Path) -> Harness:
    return harness_with(models_yaml=write_guide_models(tmp_path))


@pytest.mark.parametrize(
    "body", [body for _, body in GUIDE_REQUESTS], ids=[name for name, _ in GUIDE_REQUESTS]
)
def test_the_guides_request_is_queued_and_rendered_as_it_means(guide: Harness, body: dict[str, Any]) -> None:
    response = guide.client.post("/api/images/generate", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"

    guide.work()

    view = guide.job(response.json()["job_id"])
    assert view["status"] == "done", view
    (spec,) = guide.engine.calls
    assert spec.prompt == body["prompt"]
    assert spec.model == body.get("model", "sdxl_base")
    assert spec.refiner is bool(body.get("refiner"))
    for field in ("negative_prompt", "width", "height", "steps", "cfg", "num_images", "engine"):
        if field in body:
            assert getattr(spec, field) == body[field], field
    if body.get("seed") is not None:
        assert spec.seed == body["seed"]
    if "scheduler" in body:
        assert spec.scheduler == "euler_a"
    assert len(view["result"]["images"]) == body.get("num_images", 1)


@pytest.mark.parametrize(
    ("refiner", "code", "says"),
    [
        ("sdxl_refinr", "MODEL_NOT_FOUND", "model 'sdxl_refinr' is not registered"),
        ("sd15_base", "VALIDATION_ERROR", "'sd15_base' is not the refiner of model 'sdxl_base'"),
        (3, "VALIDATION_ERROR", "refiner"),
        ("../x", "VALIDATION_ERROR", "refiner"),
    ],
)
def test_a_refiner_that_is_not_the_models_is_refused_with_remediation(
    guide: Harness, refiner: object, code: str, says: str
) -> None:
    response = guide.client.post(
        "/api/images/generate", json={"prompt": "x", "model": "sdxl_base", "refiner": refiner}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert error["remediation"]

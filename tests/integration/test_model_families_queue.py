"""SD3 and Flux through the real queue: the API, Redis and a real worker rendering with the
diffusers engine on the tiny SD3.5- and FLUX.1-schnell-shaped pipelines, the images stored with a
sidecar and an infotext naming the flow-matching sampler that ran; a sampler the family cannot use
ends the job with a validation error naming the family; a preset's quality renders on both."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.images_service.metadata import read_png_text
from services.images_service.models import ModelRegistry
from services.images_service.tiny import TINY_FLUX, TINY_SD3
from tests.support.harness import Harness
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers_engine import DiffusersEngine

PIPELINES = {TINY_SD3: "StableDiffusion3Pipeline", TINY_FLUX: "FluxPipeline"}
FAMILIES = {TINY_SD3: "sd3", TINY_FLUX: "flux"}


@pytest.fixture
def harness(harness_with: Callable[..., Harness], tiny_models: Path) -> Iterator[Harness]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    try:
        yield harness_with(engine, models_yaml=tiny_models)
    finally:
        engine.close()


def finished(harness: Harness, **body: Any) -> dict[str, Any]:
    """Generate, drain the queue with the real worker, and return the job's view."""
    job_id = harness.generate(**body)
    harness.work()
    return harness.job(job_id)


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_renders_through_the_queue_and_records_the_flow_matching_sampler(
    harness: Harness, model: str
) -> None:
    view = finished(harness, prompt="a paper boat on a pond", model=model, seed=77)

    assert view["status"] == "done", view
    sidecar = json.loads(harness.store.get(view["result"]["meta_key"]))
    defaults = ModelRegistry(harness.settings.models_yaml).get(model).resolved_defaults
    assert (sidecar["width"], sidecar["height"]) == (64, 64)
    assert sidecar["request"]["steps"] == defaults.steps == 4
    assert sidecar["request"]["cfg"] == defaults.cfg
    assert sidecar["engine_info"]["pipeline_class"] == PIPELINES[model]
    assert sidecar["engine_info"]["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    parameters = read_png_text(harness.store.get(view["result"]["png_key"]))["parameters"]
    # Forge's names for a flow-matching model's own Euler on its linear sigma schedule.
    assert "Sampler: Euler, Schedule type: Simple" in parameters
    assert f"Model: {model}" in parameters and "Seed: 77" in parameters


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_a_sampler_the_family_cannot_use_fails_the_job_naming_it(harness: Harness, model: str) -> None:
    view = finished(harness, model=model, scheduler="DPM++ 2M Karras", seed=1)

    assert view["status"] == "error", view
    error = view["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert f"'{model}' is a flow-matching model; scheduler 'dpmpp_2m_karras'" in error["message"]
    assert f"{FAMILIES[model]} models sample only with their own flow-matching Euler" in error["message"]
    assert harness.client.get("/api/images/latest").json()["items"] == []


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_a_preset_and_quality_level_render_on_the_family(harness: Harness, model: str) -> None:
    # A preset's size is SDXL's scale; the tiny pipelines are asked for a small one.
    view = finished(harness, model=model, preset="cinematic", quality="low", width=64, height=64, seed=5)

    assert view["status"] == "done", view
    # cinematic is a pipeline (render, then post-processing): the render is its first step.
    assert [step["kind"] for step in view["steps"]] == ["generate", "postprocess"]
    sidecar = json.loads(harness.store.get(view["steps"][0]["result"]["meta_key"]))
    assert (sidecar["request"]["steps"], sidecar["request"]["cfg"]) == (20, 6.0)
    assert sidecar["request"]["negative_prompt"]
    # Flux (schnell) renders without both; SD3 uses them.
    expected = ["negative_prompt", "cfg"] if model == TINY_FLUX else None
    assert sidecar["engine_info"].get("unused") == expected

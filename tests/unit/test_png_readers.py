"""Our PNGs read by a real third-party reader (`sd-parsers`), for every engine and scheduler path:
the A1111 infotext always names the sampler that ran, and the ComfyUI graph in the ``prompt`` chunk
is one ComfyUI's own reader understands (every engine, diffusers included)."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace
from typing import Any, cast

import pytest
from PIL import Image
from sd_parsers import ParserManager
from sd_parsers.data import PromptInfo
from sd_parsers.parsers import AUTOMATIC1111Parser, ComfyUIParser

from services.contracts import SCHEDULER_NAMES, RenderSpec
from services.images_service.engines import RenderedImage, RenderResult
from services.images_service.engines.comfyui.graph import graph_settings, template_graph, ui_workflow
from services.images_service.metadata import read_png_text
from services.images_service.worker.tasks import Runtime, prepare_objects

SPEC = {
    "prompt": "a cat in a hat",
    "negative_prompt": "blurry, lowres",
    "model": "sd15_base",
    "width": 64,
    "height": 96,
    "steps": 20,
    "cfg": 7.5,
    "seed": 123,
}

A1111_READER = ParserManager(managed_parsers=[AUTOMATIC1111Parser])
COMFYUI_READER = ParserManager(managed_parsers=[ComfyUIParser])


def render_pngs(
    engine: str, spec: RenderSpec, engine_info: dict[str, Any], **result: Any
) -> list[tuple[bytes, dict[str, Any]]]:
    """What the worker stores for `result`: each image's PNG bytes and sidecar, no network."""
    chunks = result.pop("text_chunks", {})
    images = [
        RenderedImage(Image.new("RGB", (spec.width, spec.height), (i, 2, 3)), spec.seed + i, chunks)
        for i in range(spec.num_images)
    ]
    rendered = RenderResult(images=images, device="fake", engine_info=engine_info, **result)
    runtime = cast(Runtime, SimpleNamespace(settings=SimpleNamespace(s3_prefix="images/")))
    objects, _, _ = prepare_objects(runtime, "job-1", spec, rendered, engine)
    pngs = [obj.data for obj in objects if obj.content_type == "image/png"]
    sidecars = [json.loads(obj.data) for obj in objects if obj.content_type == "application/json"]
    return list(zip(pngs, sidecars, strict=True))


def spec_of(**overrides: Any) -> RenderSpec:
    return RenderSpec.model_validate({**SPEC, **overrides})


def read_a1111(png: bytes) -> PromptInfo:
    info = A1111_READER.parse(Image.open(io.BytesIO(png)))
    assert info is not None, read_png_text(png)["parameters"]
    return info


def assert_reads_back(
    png: bytes, spec: RenderSpec, seed: int, sampler: str, schedule: str | None = None
) -> None:
    info = read_a1111(png)
    (used,) = info.samplers
    assert used.name == sampler
    assert info.full_prompt == spec.prompt and info.full_negative_prompt == spec.negative_prompt
    assert used.parameters["seed"] == str(seed)
    assert used.parameters["steps"] == str(spec.steps)
    assert float(used.parameters["cfg_scale"]) == spec.cfg
    assert used.parameters.get("scheduler") == schedule
    assert info.metadata["Size"] == f"{spec.width}x{spec.height}"


def assert_comfyui_reads_graph(png: bytes, spec: RenderSpec, seed: int, sampler_name: str) -> None:
    info = COMFYUI_READER.parse(Image.open(io.BytesIO(png)))
    assert info is not None
    (used,) = info.samplers
    assert used.name == sampler_name
    assert info.full_prompt == spec.prompt and info.full_negative_prompt == spec.negative_prompt
    assert int(used.parameters["seed"]) == seed and int(used.parameters["steps"]) == spec.steps
    assert float(used.parameters["cfg_scale"]) == spec.cfg


# --- diffusers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheduler", "sampler", "schedule", "comfy"),
    [
        ("euler", "Euler", None, "euler"),
        ("euler_a", "Euler a", None, "euler_ancestral"),
        ("heun", "Heun", None, "heun"),
        ("lms", "LMS", None, "lms"),
        ("ddim", "DDIM", None, "ddim"),
        ("pndm", "PLMS", None, "ipndm"),
        ("dpmpp_2m", "DPM++ 2M", None, "dpmpp_2m"),
        ("dpmpp_2m_karras", "DPM++ 2M", "Karras", "dpmpp_2m"),
        ("dpmpp_sde", "DPM++ SDE", None, "dpmpp_sde"),
        ("unipc", "UniPC", None, "uni_pc"),
    ],
)
def test_diffusers_with_each_scheduler(
    scheduler: str, sampler: str, schedule: str | None, comfy: str
) -> None:
    spec = spec_of(scheduler=scheduler)
    ((png, sidecar),) = render_pngs("diffusers", spec, {"scheduler_class": "Whatever"})
    assert_reads_back(png, spec, 123, sampler, schedule)
    assert_comfyui_reads_graph(png, spec, 123, comfy)
    assert json.loads(read_png_text(png)["prompt"]) == sidecar["comfyui_workflow"]


def test_every_wire_scheduler_is_covered() -> None:
    covered = {"euler", "euler_a", "heun", "lms", "ddim", "pndm", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde"}
    assert set(SCHEDULER_NAMES) == covered | {"unipc"}


@pytest.mark.parametrize(
    ("engine_info", "sampler", "schedule", "comfy"),
    [
        ({"scheduler_class": "PNDMScheduler"}, "PLMS", None, "ipndm"),  # SD 1.5's own
        ({"scheduler_class": "EulerDiscreteScheduler"}, "Euler", None, "euler"),  # SDXL's own
        (
            {"scheduler_class": "DPMSolverMultistepScheduler", "scheduler_karras": True},
            "DPM++ 2M",
            "Karras",
            "dpmpp_2m",
        ),
        ({"scheduler_class": "FlowMatchEulerDiscreteScheduler"}, "Euler", "Simple", "euler"),  # SD3/Flux
        ({"scheduler_class": "DEISMultistepScheduler"}, "DEISMultistep", None, "euler"),
    ],
)
def test_diffusers_without_scheduler_names_the_models_own(
    engine_info: dict[str, Any], sampler: str, schedule: str | None, comfy: str
) -> None:
    spec = spec_of(scheduler=None)
    ((png, sidecar),) = render_pngs("diffusers", spec, engine_info)
    assert_reads_back(png, spec, 123, sampler, schedule)
    assert_comfyui_reads_graph(png, spec, 123, comfy)
    ksampler = sidecar["comfyui_workflow"]["3"]["inputs"]
    assert ksampler["seed"] == 123 and ksampler["denoise"] == 1.0
    assert sidecar["comfyui_workflow"]["4"]["inputs"]["ckpt_name"] == "sd15_base.safetensors"


def test_a_batch_gives_each_image_its_own_seed_and_a_graph_of_one() -> None:
    spec = spec_of(scheduler="euler", num_images=2)
    stored = render_pngs("diffusers", spec, {"scheduler_class": "PNDMScheduler"})
    for index, (png, sidecar) in enumerate(stored):
        assert_reads_back(png, spec, 123 + index, "Euler")
        graph = sidecar["comfyui_workflow"]
        assert graph["3"]["inputs"]["seed"] == 123 + index and graph["5"]["inputs"]["batch_size"] == 1


def test_image_to_image_graph_loads_the_upload_by_file_name() -> None:
    spec = spec_of(scheduler="euler", image="uploads/abc.png", strength=0.4)
    ((png, sidecar),) = render_pngs("diffusers", spec, {"scheduler_class": "PNDMScheduler"})
    graph = sidecar["comfyui_workflow"]
    assert graph["10"]["inputs"]["image"] == "abc.png" and graph["3"]["inputs"]["denoise"] == 0.4
    assert_reads_back(png, spec, 123, "Euler")


# --- server engines ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("scheduler", "sampler"), [(None, "Euler"), ("dpmpp_2m", "DPM++ 2M")])
def test_comfyui_template_keeps_comfyuis_own_chunks(scheduler: str | None, sampler: str) -> None:
    spec = spec_of(scheduler=scheduler)
    graph = template_graph(spec, "sd15_base.safetensors")
    chunks = {"prompt": json.dumps(graph), "workflow": json.dumps(ui_workflow(graph))}
    ((png, sidecar),) = render_pngs("comfyui", spec, {"workflow": "template"}, text_chunks=chunks)
    assert_reads_back(png, spec, 123, sampler)
    assert read_png_text(png)["prompt"] == chunks["prompt"]  # ComfyUI's own, byte for byte
    assert sidecar["comfyui_workflow"] == graph
    assert_comfyui_reads_graph(png, spec, 123, graph["3"]["inputs"]["sampler_name"])


def test_comfyui_raw_graph_names_its_own_sampler() -> None:
    spec = spec_of(scheduler=None, steps=30, cfg=5.0)
    graph = template_graph(spec, "x.safetensors")
    graph["3"]["inputs"].update(sampler_name="dpmpp_2m_sde", scheduler="karras", seed=9, steps=12, cfg=4.0)
    seed, settings_used = graph_settings(graph)
    chunks = {"prompt": json.dumps(graph), "workflow": json.dumps(ui_workflow(graph))}
    ((png, _),) = render_pngs(
        "comfyui", spec, {"workflow": "raw"}, text_chunks=chunks, settings_used=settings_used
    )
    info = read_a1111(png)
    (used,) = info.samplers
    assert used.name == "DPM++ 2M SDE" and used.parameters["scheduler"] == "Karras"
    assert used.parameters["steps"] == "12" and float(used.parameters["cfg_scale"]) == 4.0


@pytest.mark.parametrize(
    ("scheduler", "answer", "sampler", "schedule"),
    [
        (None, {"sampler_name": "Euler a", "scheduler": "Automatic"}, "Euler a", None),
        (None, {"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "DPM++ 2M", "Karras"),
        ("dpmpp_2m_karras", {}, "DPM++ 2M", "Karras"),
    ],
)
def test_a1111(scheduler: str | None, answer: dict[str, Any], sampler: str, schedule: str | None) -> None:
    spec = spec_of(scheduler=scheduler, model=None)
    info = {"info": answer, "sd_model_name": "v1-5-pruned"}
    ((png, sidecar),) = render_pngs("a1111", spec, info)
    assert_reads_back(png, spec, 123, sampler, schedule)
    assert sidecar["comfyui_workflow"]["4"]["inputs"]["ckpt_name"] == "v1-5-pruned.safetensors"
    assert_comfyui_reads_graph(png, spec, 123, sidecar["comfyui_workflow"]["3"]["inputs"]["sampler_name"])


@pytest.mark.parametrize(
    ("scheduler", "used", "sampler", "schedule"),
    [(None, "euler", "Euler", None), ("dpmpp_2m_karras", "dpmpp_2m_k", "DPM++ 2M", "Karras")],
)
def test_invokeai(scheduler: str | None, used: str, sampler: str, schedule: str | None) -> None:
    spec = spec_of(scheduler=scheduler, model=None)
    info = {"scheduler": used, "model": {"name": "sd-1.5", "base": "sd-1", "key": "k"}}
    ((png, sidecar),) = render_pngs("invokeai", spec, info)
    assert_reads_back(png, spec, 123, sampler, schedule)
    assert sidecar["comfyui_workflow"]["4"]["inputs"]["ckpt_name"] == "sd-1.5.safetensors"
    assert_comfyui_reads_graph(png, spec, 123, sidecar["comfyui_workflow"]["3"]["inputs"]["sampler_name"])


def test_a_guided_render_writes_a1111s_hires_and_controlnet_fields() -> None:
    """A hires fix and ControlNet units read back as A1111 and its ControlNet extension write them:
    Size is the first pass's, `Hires upscale`/`Denoising strength` say the rest."""
    control = {"image": "uploads/x.png", "type": "canny", "model": "tiny-canny", "weight": 0.5, "end": 0.8}
    spec = spec_of(scheduler="euler", hires={"scale": 2.0, "strength": 0.45}, controls=[control])
    ((png, _),) = render_pngs("diffusers", spec, {"scheduler_class": "Whatever"})
    assert_reads_back(png, spec, 123, "Euler")  # sd-parsers still reads the sampler line
    metadata = read_a1111(png).metadata
    assert (metadata["Hires upscale"], metadata["Denoising strength"]) == ("2", "0.45")
    assert metadata["Hires upscaler"] == "Lanczos"
    # A unit is one quoted value (sd-parsers splits inside quotes; A1111's own reader does not).
    settings_line = read_png_text(png)["parameters"].splitlines()[-1]
    fields = {key: value for key, value in A1111_FIELD.findall(settings_line)}
    assert json.loads(fields["ControlNet 0"]) == (
        "Module: canny, Model: tiny-canny, Weight: 0.5, Guidance Start: 0, Guidance End: 0.8"
    )
    assert fields["Size"] == "64x96"


A1111_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""How A1111's infotext reader splits ``key: value, …`` (a quoted value may hold commas)."""


def test_loras_and_the_refiner_pass_are_in_the_graph_as_comfyui_runs_them() -> None:
    spec = spec_of(
        scheduler="euler",
        steps=10,
        refiner=True,
        loras=[{"name": "film_grain", "weight": 0.7}, {"name": "tiny-lora", "weight": -0.5}],
    )
    info = {"scheduler_class": "Whatever", "refiner": "sdxl_refiner"}
    ((png, sidecar),) = render_pngs("diffusers", spec, info)
    graph = sidecar["comfyui_workflow"]
    assert json.loads(read_png_text(png)["prompt"]) == graph

    first, second = graph["40"]["inputs"], graph["41"]["inputs"]
    assert (first["lora_name"], first["strength_model"], first["strength_clip"]) == (
        "film_grain.safetensors", 0.7, 0.7
    )
    assert (first["model"], first["clip"]) == (["4", 0], ["4", 1])
    assert (second["model"], second["clip"], second["strength_model"]) == (["40", 0], ["40", 1], -0.5)
    # Every user of the checkpoint's model and text encoder now takes the last LoRA's.
    for node_id in ("6", "7"):
        assert graph[node_id]["inputs"]["clip"] == ["41", 1]

    base, refiner = graph["3"], graph["53"]
    assert base["class_type"] == refiner["class_type"] == "KSamplerAdvanced"
    assert base["inputs"]["model"] == ["41", 0]
    assert (base["inputs"]["start_at_step"], base["inputs"]["end_at_step"]) == (0, 8)
    assert base["inputs"]["return_with_leftover_noise"] == "enable"
    assert (refiner["inputs"]["start_at_step"], refiner["inputs"]["end_at_step"]) == (8, 10)
    assert refiner["inputs"]["add_noise"] == "disable" and refiner["inputs"]["latent_image"] == ["3", 0]
    assert graph["50"]["inputs"]["ckpt_name"] == "sdxl_refiner.safetensors"
    assert refiner["inputs"]["model"] == ["50", 0]
    assert graph["8"]["inputs"]["samples"] == ["53", 0]
    # What ComfyUI's reader makes of it: both samplers, each with the prompt and the seed.
    info_read = COMFYUI_READER.parse(Image.open(io.BytesIO(png)))
    assert info_read is not None and len(info_read.samplers) == 2
    for used in info_read.samplers:
        assert used.name == "euler" and used.parameters["noise_seed"] == 123
        assert [prompt.value for prompt in used.prompts] == [spec.prompt]

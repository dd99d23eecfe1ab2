"""What a spec may ask of a diffusers model, checked without a pipeline: the job's mode from its
inputs, the steps a strength runs, the refiner hand-over, schedulers that fit the model, LoRAs made
for its family. The module is pure: importing it loads neither torch nor diffusers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from services.contracts import SCHEDULER_NAMES, RenderSpec
from services.images_service.engines.diffusers.validation import (
    IMG2IMG,
    INPAINT,
    SCHEDULERS,
    TXT2IMG,
    check_lora_bases,
    check_refiner_handover,
    check_spec,
    denoise_steps,
    model_family,
    pipeline_strength,
    scheduler_choice,
)
from services.images_service.errors import ValidationFailed
from services.images_service.models import LoraEntry

UPLOADED = "uploads/19990101_000000_deadbeef.png"
MASK = "uploads/19990101_000000_cafef00d.png"


def make_spec(**overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a lighthouse",
        "model": "sd15",
        "width": 64,
        "height": 64,
        "steps": 10,
        "cfg": 7.0,
        "seed": 1,
    }
    return RenderSpec(**{**fields, **overrides})


def test_validation_imports_neither_torch_nor_diffusers() -> None:
    probe = (
        "import sys, services.images_service.engines.diffusers.validation\n"
        "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize(
    ("inputs", "mode"),
    [({}, TXT2IMG), ({"image": UPLOADED}, IMG2IMG), ({"image": UPLOADED, "mask": MASK}, INPAINT)],
)
def test_the_inputs_a_spec_sends_decide_its_mode(inputs: dict[str, str], mode: str) -> None:
    assert check_spec(make_spec(**inputs)) == mode


def test_a_spec_without_a_model_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="the diffusers engine needs a model name") as caught:
        check_spec(make_spec(model=None))
    assert caught.value.remediation == ["Set `model`."]


def test_a_mask_without_an_image_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="a mask needs an image to inpaint"):
        check_spec(make_spec(mask=MASK))


@pytest.mark.parametrize("inputs", [{"image": UPLOADED}, {"image": UPLOADED, "mask": MASK}])
def test_the_refiner_follows_text_to_image_only(inputs: dict[str, str]) -> None:
    assert check_spec(make_spec(refiner=True)) == TXT2IMG
    with pytest.raises(ValidationFailed, match="follows text-to-image only"):
        check_spec(make_spec(refiner=True, **inputs))


@pytest.mark.parametrize(
    ("steps", "strength", "denoised"),
    [(10, 0.0, 0), (10, 0.01, 1), (10, 0.2, 2), (10, 0.95, 9), (10, 1.0, 10), (3, 0.5, 1)],
)
def test_a_strength_runs_its_share_of_the_steps_and_at_least_one(
    steps: int, strength: float, denoised: int
) -> None:
    assert denoise_steps(steps, strength) == denoised
    if strength > 0:
        # What diffusers is given runs exactly the steps reported.
        assert int(steps * pipeline_strength(steps, strength)) == denoised


def test_a_strength_that_runs_a_step_is_passed_as_sent() -> None:
    assert pipeline_strength(10, 0.35) == 0.35
    assert pipeline_strength(10, 0.05) == pytest.approx(0.15)
    assert pipeline_strength(1, 0.5) == 1.0


def test_only_a_pipeline_that_stops_early_hands_over_to_a_refiner() -> None:
    check_refiner_handover("xl", "StableDiffusionXLPipeline", takes_denoising_end=True)
    with pytest.raises(ValidationFailed, match=r"model 'sd15' \(StableDiffusionPipeline\) cannot hand over"):
        check_refiner_handover("sd15", "StableDiffusionPipeline", takes_denoising_end=False)


def test_the_wire_names_every_scheduler_the_table_builds() -> None:
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES


def test_a_scheduler_name_picks_its_class_and_overrides() -> None:
    assert scheduler_choice(None, "sd15", "PNDMScheduler") is None
    assert scheduler_choice("ddim", "sd15", "PNDMScheduler") == (
        "DDIMScheduler",
        {"clip_sample": False, "set_alpha_to_one": False},
    )
    with pytest.raises(ValidationFailed, match="unknown scheduler 'dpm_fast'") as caught:
        scheduler_choice("dpm_fast", "sd15", "PNDMScheduler")
    assert caught.value.remediation == [f"Use one of: {', '.join(SCHEDULER_NAMES)}."]


def test_a_flow_matching_model_keeps_its_own_scheduler() -> None:
    flow = "FlowMatchEulerDiscreteScheduler"
    assert scheduler_choice(None, "flux", flow) is None
    assert scheduler_choice("euler", "flux", flow) is None
    with pytest.raises(ValidationFailed, match="'flux' is a flow-matching model; scheduler 'ddim'"):
        scheduler_choice("ddim", "flux", flow)
    with pytest.raises(ValidationFailed, match="unknown scheduler"):
        scheduler_choice("dpm_fast", "flux", flow)


@pytest.mark.parametrize(
    ("pipeline_class", "family"),
    [
        ("StableDiffusionPipeline", "sd15"),
        ("StableDiffusionInpaintPipeline", "sd15"),
        ("StableDiffusionXLImg2ImgPipeline", "sdxl"),
        ("StableDiffusion3Pipeline", "sd3"),
        ("FluxPipeline", "flux"),
        ("KandinskyPipeline", None),
    ],
)
def test_a_pipeline_class_names_its_family(pipeline_class: str, family: str | None) -> None:
    assert model_family(pipeline_class) == family


def test_a_lora_made_for_another_family_is_refused() -> None:
    for_xl = LoraEntry(name="xl.style", path="/loras/xl.safetensors", base="sdxl")
    undeclared = LoraEntry(name="any", path="/loras/any.safetensors")
    check_lora_bases([for_xl, undeclared], "xl", "sdxl")
    check_lora_bases([for_xl], "mystery", None)  # a model of unknown family takes any
    with pytest.raises(ValidationFailed, match="LoRA 'xl.style' is for sdxl models; model 'sd15' is sd15"):
        check_lora_bases([undeclared, for_xl], "sd15", "sd15")

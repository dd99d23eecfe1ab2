"""The diffusers engine on the tiny pipelines beyond text-to-image: image-to-image (strength, its
progress, strength 0), inpainting (only the masked region changes) and LoRAs (change the render,
gone for the next job, no reload of the base model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from services.contracts import LoraRef, RenderSpec
from services.images_service.engines.base import RenderResult
from services.images_service.errors import EngineError, ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_lora
from services.images_service.tiny import TINY_LORA, TINY_SD15
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers.engine import DiffusersEngine

STEPS = 10
"""Few steps keep each 64x64 render fast; enough for strengths 0.2 and 0.9 to differ in steps run."""

SIZE = 64


def make_spec(**overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a red cat on a sofa",
        "model": TINY_SD15,
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg": 7.0,
        "seed": 1234,
    }
    return RenderSpec(**{**fields, **overrides})


def ignore_progress(step: int, total: int) -> None:
    pass


def pixels(result: RenderResult | Image.Image) -> np.ndarray:
    image = result.images[0].image if isinstance(result, RenderResult) else result
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def loads_of(model: str) -> float:
    return REGISTRY.get_sample_value("images_model_loads_total", {"model": model}) or 0.0


def gradient(size: int = SIZE) -> Image.Image:
    """A smooth picture, far from the noise a random model paints."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(
        [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 96.0)], -1
    )
    return Image.fromarray(rgb.astype(np.uint8))


def left_half_mask(size: int = SIZE) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray(mask)


STORED = {
    "uploads/20250101_000000_0000abcd.png": gradient(),
    "uploads/20250101_000000_mask0000.png": left_half_mask(),
}
IMAGE_KEY, MASK_KEY = list(STORED)


def load_stored(key: str) -> Image.Image:
    return STORED[key].copy()


@pytest.fixture
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu", image_loader=load_stored)
    yield engine
    engine.close()


@pytest.fixture
def reconstruct(tiny_models: Path) -> Callable[[Image.Image], np.ndarray]:  # noqa: F811
    """The tiny VAE's own encode → decode of a picture: where image-to-image tends as strength → 0
    (a random decoder cannot reproduce the picture itself)."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    vae = AutoencoderKL.from_pretrained(ModelRegistry(tiny_models).get(TINY_SD15).source, subfolder="vae")
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))

    def run(image: Image.Image) -> np.ndarray:
        with torch.no_grad():
            latents = vae.encode(processor.preprocess(image)).latent_dist.mode()
            return pixels(processor.postprocess(vae.decode(latents).sample)[0])

    return run


def test_img2img_differs_from_its_input_and_depends_on_strength(
    engine: DiffusersEngine, reconstruct: Callable[[Image.Image], np.ndarray]
) -> None:
    loads = loads_of(TINY_SD15)
    light = engine.render(make_spec(image=IMAGE_KEY, strength=0.2), ignore_progress)
    heavy = engine.render(make_spec(image=IMAGE_KEY, strength=0.9), ignore_progress)

    source, model_view = pixels(gradient()), reconstruct(gradient())
    assert light.images[0].image.size == (SIZE, SIZE)
    assert mean_abs_diff(pixels(light), source) > 5
    assert mean_abs_diff(pixels(heavy), pixels(light)) > 1
    # Less strength keeps more of the input (as the model sees it).
    assert mean_abs_diff(pixels(light), model_view) < mean_abs_diff(pixels(heavy), model_view)
    assert light.engine_info["mode"] == "img2img"
    assert light.engine_info["pipeline_class"] == "StableDiffusionImg2ImgPipeline"
    assert (light.engine_info["strength"], light.engine_info["denoise_steps"]) == (0.2, 2)
    assert heavy.engine_info["denoise_steps"] == 9
    # The image-to-image pipeline is made from the resident one: no second load.
    assert loads_of(TINY_SD15) - loads <= 1


def test_img2img_progress_counts_the_denoising_steps_it_runs(engine: DiffusersEngine) -> None:
    calls: list[tuple[int, int]] = []

    engine.render(make_spec(image=IMAGE_KEY, strength=0.5), lambda step, total: calls.append((step, total)))

    assert calls[0] == (0, 5) and calls[-1] == (5, 5)
    assert {total for _, total in calls} == {5}
    assert [step for step, _ in calls] == sorted(step for step, _ in calls)


def test_strength_zero_keeps_the_picture_and_a_tiny_strength_still_runs_a_step(
    engine: DiffusersEngine,
) -> None:
    kept = engine.render(make_spec(image=IMAGE_KEY, strength=0.0), ignore_progress)
    touched = engine.render(make_spec(image=IMAGE_KEY, strength=0.01), ignore_progress)

    assert np.array_equal(pixels(kept), pixels(gradient()))
    assert kept.engine_info["denoise_steps"] == 0
    assert touched.engine_info["denoise_steps"] == 1
    assert not np.array_equal(pixels(touched), pixels(gradient()))


def test_inpainting_repaints_only_the_masked_region(engine: DiffusersEngine) -> None:
    result = engine.render(make_spec(image=IMAGE_KEY, mask=MASK_KEY, strength=1.0), ignore_progress)

    out, source = pixels(result), pixels(gradient())
    half = SIZE // 2
    assert result.engine_info["mode"] == "inpaint"
    assert result.engine_info["pipeline_class"] == "StableDiffusionInpaintPipeline"
    # Kept exactly where the mask is black, repainted where it is white.
    assert np.array_equal(out[:, half:], source[:, half:])
    assert mean_abs_diff(out[:, :half], source[:, :half]) > 5


def test_a_lora_changes_the_render_and_is_gone_for_the_next_job(engine: DiffusersEngine) -> None:
    baseline = engine.render(make_spec(), ignore_progress)
    loads = loads_of(TINY_SD15)

    with_lora = engine.render(make_spec(loras=[LoraRef(name=TINY_LORA, weight=1.0)]), ignore_progress)
    img2img_lora = engine.render(
        make_spec(image=IMAGE_KEY, strength=0.9, loras=[LoraRef(name=TINY_LORA, weight=0.8)]), ignore_progress
    )
    after = engine.render(make_spec(), ignore_progress)

    assert mean_abs_diff(pixels(with_lora), pixels(baseline)) > 2
    assert with_lora.engine_info["loras"] == [{"name": TINY_LORA, "weight": 1.0}]
    assert with_lora.timings["lora_s"] > 0
    assert img2img_lora.engine_info["loras"] == [{"name": TINY_LORA, "weight": 0.8}]
    assert np.array_equal(pixels(after), pixels(baseline))
    assert "loras" not in after.engine_info
    assert loads_of(TINY_SD15) == loads  # applied and removed without reloading the base model


def test_loras_that_cannot_apply_are_refused_and_leave_nothing_behind(
    engine: DiffusersEngine,
    tiny_models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(tiny_models.read_text())
    lora_path = ModelRegistry(tiny_models).lora(TINY_LORA).path
    register_lora(models_yaml, "xl-style", {"path": lora_path, "base": "sdxl"})
    register_lora(models_yaml, "moved", {"path": str(tmp_path / "gone.safetensors"), "base": "sd15"})
    engine = DiffusersEngine(ModelRegistry(models_yaml), device="cpu")
    baseline = engine.render(make_spec(), ignore_progress)

    with pytest.raises(ValidationFailed, match="for sdxl models"):
        engine.render(make_spec(loras=[LoraRef(name="xl-style")]), ignore_progress)
    with pytest.raises(ModelNotFound, match="nothing is there"):
        engine.render(make_spec(loras=[LoraRef(name=TINY_LORA), LoraRef(name="moved")]), ignore_progress)
    with pytest.raises(ModelNotFound) as unknown:
        engine.render(make_spec(loras=[LoraRef(name="never-registered")]), ignore_progress)
    assert any("loras:" in hint for hint in unknown.value.remediation)

    assert np.array_equal(pixels(engine.render(make_spec(), ignore_progress)), pixels(baseline))
    engine.close()


def test_img2img_without_access_to_stored_images_is_refused(tiny_models: Path) -> None:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu")
    try:
        with pytest.raises(EngineError, match="without access to stored images"):
            engine.render(make_spec(image=IMAGE_KEY, strength=0.5), ignore_progress)
        with pytest.raises(ValidationFailed, match="refiner"):
            engine.render(make_spec(model="tiny-sdxl", image=IMAGE_KEY, refiner=True), ignore_progress)
    finally:
        engine.close()

"""The flow-matching families on the diffusers engine, on the tiny SD3.5- and FLUX.1-schnell-shaped
pipelines: they render, seeded renders repeat, only their own sampler is taken, Flux's ignored
settings are recorded, image-to-image, inpainting, the hires fix and a LoRA of their family run,
ControlNets, SD1.5 LoRAs and the refiner are refused, and so are sides their latents cannot hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.contracts import ControlInput, RenderSpec
from services.images_service.engines.base import RenderResult
from services.images_service.errors import ValidationFailed
from services.images_service.models import ModelRegistry
from services.images_service.tiny import TINY_CANNY, TINY_FLUX, TINY_LORA, TINY_SD3, make_tiny_t5_tokenizer
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers.engine import DiffusersEngine, side_multiple
from services.images_service.engines.diffusers.validation import check_sides

FAMILIES = {TINY_SD3: "sd3", TINY_FLUX: "flux"}
PIPELINES = {TINY_SD3: "StableDiffusion3", TINY_FLUX: "Flux"}
"""Each tiny model's family and its pipelines' class-name prefix."""

SIZE = 64


def make_spec(model: str, **overrides: Any) -> RenderSpec:
    fields: dict[str, Any] = {
        "prompt": "a red cat on a sofa",
        "model": model,
        "width": SIZE,
        "height": SIZE,
        "steps": 4,
        "cfg": 4.5,
        "seed": 1234,
    }
    return RenderSpec(**{**fields, **overrides})


def ignore_progress(step: int, total: int) -> None:
    pass


def pixels(result: RenderResult) -> np.ndarray:
    return np.asarray(result.images[0].image.convert("RGB"), dtype=np.int16)


def gradient(inverted: bool = False) -> Image.Image:
    ramp = np.linspace(0, 255, SIZE, dtype=np.float32)
    rgb = np.stack(
        [np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 96.0)], -1
    )
    return Image.fromarray((255 - rgb if inverted else rgb).astype(np.uint8))


def left_half_mask() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    return Image.fromarray(mask)


STORED = {
    "uploads/a.png": gradient(),
    "uploads/b.png": gradient(inverted=True),
    "uploads/m.png": left_half_mask(),
}


@pytest.fixture
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(
        ModelRegistry(tiny_models), device="cpu", image_loader=lambda key: STORED[key].copy()
    )
    yield engine
    engine.close()


def test_the_t5_tokenizer_round_trips_offline(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = make_tiny_t5_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)

    prompt = "a red cat, 35mm! ü"
    assert loaded(prompt).input_ids == tokenizer(prompt).input_ids
    assert tokenizer(prompt).input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id in tokenizer(prompt).input_ids  # outside ASCII: <unk>, no failure


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_the_tiny_model_is_registered_small_with_its_family(tiny_models: Path, model: str) -> None:  # noqa: F811
    entry = ModelRegistry(tiny_models).get(model)
    folder = Path(entry.source)
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

    assert entry.family == FAMILIES[model]
    assert size < 20_000_000


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_renders_64x64_with_its_own_pipeline_and_flow_matching_sampler(
    engine: DiffusersEngine, model: str
) -> None:
    first = engine.render(make_spec(model), ignore_progress)
    again = engine.render(make_spec(model), ignore_progress)
    other_seed = engine.render(make_spec(model, seed=1235), ignore_progress)

    assert first.images[0].image.size == (SIZE, SIZE)
    assert first.engine_info["pipeline_class"] == f"{PIPELINES[model]}Pipeline"
    assert first.engine_info["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other_seed))
    assert pixels(first).std() > 0  # a picture, not a blank


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_euler_means_the_models_own_sampler(engine: DiffusersEngine, model: str) -> None:
    own = engine.render(make_spec(model), ignore_progress)
    euler = engine.render(make_spec(model, scheduler="euler"), ignore_progress)

    assert euler.engine_info["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    assert np.array_equal(pixels(own), pixels(euler))


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
@pytest.mark.parametrize("scheduler", ["dpmpp_2m_karras", "euler_a", "ddim"])
def test_a_sampler_of_noise_prediction_models_is_refused_naming_the_family(
    engine: DiffusersEngine, model: str, scheduler: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        engine.render(make_spec(model, scheduler=scheduler), ignore_progress)

    message = str(refused.value)
    assert f"'{model}' is a flow-matching model; scheduler '{scheduler}' does not apply" in message
    assert f"{FAMILIES[model]} models sample only with their own flow-matching Euler" in message
    assert "euler" in " ".join(refused.value.remediation)


def test_flux_schnell_ignores_cfg_and_the_negative_prompt_and_says_so(engine: DiffusersEngine) -> None:
    plain = engine.render(make_spec(TINY_FLUX, cfg=0.0), ignore_progress)
    guided = engine.render(make_spec(TINY_FLUX, cfg=7.0, negative_prompt="blurry"), ignore_progress)

    # schnell is timestep-distilled: no guidance embedding, no classifier-free guidance.
    assert np.array_equal(pixels(plain), pixels(guided))
    assert plain.engine_info["unused"] == ["cfg"]
    assert guided.engine_info["unused"] == ["negative_prompt", "cfg"]


def test_sd3_takes_cfg_and_the_negative_prompt(engine: DiffusersEngine) -> None:
    low = engine.render(make_spec(TINY_SD3, cfg=1.0), ignore_progress)
    high = engine.render(make_spec(TINY_SD3, cfg=4.5), ignore_progress)
    negative = engine.render(make_spec(TINY_SD3, cfg=4.5, negative_prompt="blurry"), ignore_progress)

    assert not np.array_equal(pixels(low), pixels(high))
    assert not np.array_equal(pixels(high), pixels(negative))
    assert "unused" not in high.engine_info and "unused" not in negative.engine_info


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_image_to_image_and_inpainting_render_from_the_input(engine: DiffusersEngine, model: str) -> None:
    from_a = engine.render(make_spec(model, image="uploads/a.png", strength=0.5), ignore_progress)
    again = engine.render(make_spec(model, image="uploads/a.png", strength=0.5), ignore_progress)
    from_b = engine.render(make_spec(model, image="uploads/b.png", strength=0.5), ignore_progress)
    inpainted = engine.render(
        make_spec(model, image="uploads/a.png", mask="uploads/m.png", strength=0.8), ignore_progress
    )

    assert from_a.engine_info["pipeline_class"] == f"{PIPELINES[model]}Img2ImgPipeline"
    assert from_a.engine_info["denoise_steps"] == 2
    assert np.array_equal(pixels(from_a), pixels(again))
    assert not np.array_equal(pixels(from_a), pixels(from_b))
    assert inpainted.engine_info["pipeline_class"] == f"{PIPELINES[model]}InpaintPipeline"
    kept = np.asarray(gradient().convert("RGB"), dtype=np.int16)[:, SIZE // 2 :]
    assert np.array_equal(pixels(inpainted)[:, SIZE // 2 :], kept)  # outside the mask: as sent


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_a_controlnet_is_refused_on_the_flow_matching_families(engine: DiffusersEngine, model: str) -> None:
    control = ControlInput(image="uploads/a.png", type="canny", model=TINY_CANNY)
    with pytest.raises(ValidationFailed, match=f"'{model}' \\({FAMILIES[model]}\\) cannot take a ControlNet"):
        engine.render(make_spec(model, controls=[control]), ignore_progress)


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_an_sd15_lora_is_refused_on_the_flow_matching_families(engine: DiffusersEngine, model: str) -> None:
    with pytest.raises(ValidationFailed, match=f"is for sd15 models; model '{model}' is {FAMILIES[model]}"):
        engine.render(make_spec(model, loras=[{"name": TINY_LORA, "weight": 1.0}]), ignore_progress)


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_the_refiner_pass_is_refused(engine: DiffusersEngine, model: str) -> None:
    with pytest.raises(ValidationFailed, match=f"model '{model}' has no refiner configured"):
        engine.render(make_spec(model, refiner=True), ignore_progress)


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_the_hires_fix_redraws_at_the_output_size(engine: DiffusersEngine, model: str) -> None:
    result = engine.render(make_spec(model, hires={"scale": 1.5, "strength": 0.5}), ignore_progress)

    assert result.images[0].image.size == (96, 96)
    assert result.engine_info["hires"]["pipeline_class"] == f"{PIPELINES[model]}Img2ImgPipeline"


def make_transformer_lora(
    model_dir: Path, out_dir: Path, pipeline_class: Any, transformer_class: Any
) -> Path:
    """A LoRA on the tiny transformer's attention projections, random A and B (so it shows), saved
    as diffusers saves trained ones."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = transformer_class.from_pretrained(model_dir, subfolder="transformer")
    torch.manual_seed(0)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    layers = get_peft_model_state_dict(transformer)
    pipeline_class.save_lora_weights(out_dir, transformer_lora_layers=layers, weight_name="lora.safetensors")
    return out_dir / "lora.safetensors"


@pytest.mark.parametrize("model", [TINY_SD3, TINY_FLUX])
def test_a_lora_made_for_the_family_applies_and_is_taken_out(
    tiny_models: Path,  # noqa: F811
    tmp_path: Path,
    model: str,
) -> None:
    pytest.importorskip("peft")
    import diffusers

    from services.images_service.models import register_lora

    transformer_class = {TINY_SD3: "SD3Transformer2DModel", TINY_FLUX: "FluxTransformer2DModel"}[model]
    registry = ModelRegistry(tiny_models)
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(tiny_models.read_text())
    weights = make_transformer_lora(
        Path(registry.get(model).source),
        tmp_path / "lora",
        getattr(diffusers, f"{PIPELINES[model]}Pipeline"),
        getattr(diffusers, transformer_class),
    )
    register_lora(models_yaml, "family-lora", {"path": str(weights), "base": FAMILIES[model]})
    engine = DiffusersEngine(ModelRegistry(models_yaml), device="cpu")
    try:
        plain = engine.render(make_spec(model), ignore_progress)
        with_lora = engine.render(make_spec(model, loras=[{"name": "family-lora"}]), ignore_progress)
        after = engine.render(make_spec(model), ignore_progress)
    finally:
        engine.close()

    assert with_lora.engine_info["loras"] == [{"name": "family-lora", "weight": 1.0}]
    assert not np.array_equal(pixels(plain), pixels(with_lora))
    assert np.array_equal(pixels(plain), pixels(after))


def test_side_multiples_follow_the_vae_the_patches_and_the_packing() -> None:
    def pipe(*, vae: int, packed: int, patch: int | None = None) -> Any:
        processor = SimpleNamespace(config=SimpleNamespace(vae_scale_factor=packed))
        return SimpleNamespace(vae_scale_factor=vae, image_processor=processor, patch_size=patch)

    assert side_multiple(pipe(vae=8, packed=8)) == 8  # SD1.5, SDXL
    assert side_multiple(pipe(vae=8, packed=8, patch=2)) == 16  # SD3: 2x2 patches of latents
    assert side_multiple(pipe(vae=8, packed=16)) == 16  # Flux: latents packed 2x2


def test_a_side_the_latents_cannot_hold_is_refused_with_the_multiple() -> None:
    check_sides("sd35", "sd3", [1024, 576], 16)
    with pytest.raises(
        ValidationFailed, match=r"'flux-dev' \(flux\) renders sides in multiples of 16; 520 is not"
    ):
        check_sides("flux-dev", "flux", [520, 512, 520], 16)

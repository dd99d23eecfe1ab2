"""Guided generation on the diffusers engine with the tiny models: control maps (canny edges),
ControlNets (several at once, on image-to-image, SDXL, weight 0 as absent, the wrong family refused),
an IP-Adapter reference image (weight 0 as absent, gone for the next job, with a LoRA), and the hires
fix (output size, progress over both passes, strength 0, a registered upscaler)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.contracts import ControlInput, HiresFix, LoraRef, RenderSpec
from services.images_service.control_maps import CANNY_THRESHOLDS, control_map
from services.images_service.engines.base import RenderResult
from services.images_service.errors import ModelNotFound, ValidationFailed
from services.images_service.models import ModelRegistry, register_addon
from services.images_service.tiny import (
    TINY_CANNY,
    TINY_DEPTH,
    TINY_IP_ADAPTER,
    TINY_LORA,
    TINY_SD15,
    TINY_SDXL,
    TINY_SDXL_CANNY,
)
from tests.support.tiny_models import tiny_models  # noqa: F401

# isort: split
# Imported after the fixture module, which sets HF_HUB_OFFLINE before huggingface_hub reads it.
from services.images_service.engines.diffusers.engine import DiffusersEngine

SIZE = 64
STEPS = 3
"""Few steps keep each 64x64 render fast; a control or reference changes every one of them."""

VISIBLE = 1.0
"""Mean absolute pixel difference (0-255) above which two renders visibly differ; the tiny models'
guided renders differ from unguided ones by 5-20."""


def square(size: int = SIZE) -> Image.Image:
    """A white square on black: canny finds its four sides and nothing else."""
    picture = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(picture).rectangle(
        [size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1], fill="white"
    )
    return picture


def gradient(size: int = SIZE) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(
        [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 96.0)], -1
    )
    return Image.fromarray(rgb.astype(np.uint8))


STORED = {"uploads/square.png": square(), "uploads/gradient.png": gradient()}
SQUARE_KEY, GRADIENT_KEY = list(STORED)


def load_stored(key: str) -> Image.Image:
    return STORED[key].copy()


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


def canny(**overrides: Any) -> ControlInput:
    return ControlInput(**{"image": SQUARE_KEY, "type": "canny", "model": TINY_CANNY, **overrides})


def ignore_progress(step: int, total: int) -> None:
    pass


def pixels(result: RenderResult) -> np.ndarray:
    return np.asarray(result.images[0].image.convert("RGB"), dtype=np.int16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def engine(tiny_models: Path) -> Iterator[DiffusersEngine]:  # noqa: F811
    engine = DiffusersEngine(ModelRegistry(tiny_models), device="cpu", cache_size=2, image_loader=load_stored)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def plain(engine: DiffusersEngine) -> np.ndarray:
    """The unguided render every guided one is compared with."""
    return pixels(engine.render(make_spec(), ignore_progress))


def test_canny_map_of_a_square_is_its_outline() -> None:
    edges = np.asarray(control_map(square(), ControlInput(image="k", type="canny"), (SIZE, SIZE)))

    assert edges.shape == (SIZE, SIZE, 3)
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 0] == edges[..., 2]).all()
    assert set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] > 0
    # The outline: edges along the square's sides, none inside it or out in the corners.
    assert on[SIZE // 4 - 1 : SIZE // 4 + 1, SIZE // 4 : 3 * SIZE // 4].any(axis=0).all()
    assert not on[SIZE // 4 + 3 : 3 * SIZE // 4 - 3, SIZE // 4 + 3 : 3 * SIZE // 4 - 3].any()
    assert not on[:8, :8].any()
    assert CANNY_THRESHOLDS == (100, 200)


def test_control_map_is_resized_and_kept_as_sent_without_preprocessing() -> None:
    raw = control_map(gradient(), ControlInput(image="k", type="canny", preprocess=False), (32, 48))
    depth = control_map(gradient().convert("L"), ControlInput(image="k", type="depth"), (32, 48))

    assert raw.size == depth.size == (32, 48)
    assert raw.mode == depth.mode == "RGB"
    assert len(np.unique(np.asarray(raw))) > 2  # the picture, not an edge map
    first = np.asarray(control_map(square(), ControlInput(image="k", type="canny"), (SIZE, SIZE)))
    assert (
        first == np.asarray(control_map(square(), ControlInput(image="k", type="canny"), (SIZE, SIZE)))
    ).all()


def test_a_canny_control_steers_the_render_and_is_recorded(
    engine: DiffusersEngine, plain: np.ndarray
) -> None:
    result = engine.render(make_spec(controls=[canny()]), ignore_progress)

    assert result.images[0].image.size == (SIZE, SIZE)
    assert mean_abs_diff(pixels(result), plain) > VISIBLE
    assert result.engine_info["pipeline_class"] == "StableDiffusionControlNetPipeline"
    assert result.engine_info["controls"] == [
        {
            "model": TINY_CANNY,
            "type": "canny",
            "weight": 1.0,
            "start": 0.0,
            "end": 1.0,
            "preprocess": True,
            "canny_thresholds": [100, 200],
        }
    ]


def test_the_same_controlled_spec_renders_the_same_pixels(engine: DiffusersEngine) -> None:
    spec = make_spec(controls=[canny(weight=0.7, start=0.1, end=0.9)])

    first, second = engine.render(spec, ignore_progress), engine.render(spec, ignore_progress)

    assert (pixels(first) == pixels(second)).all()


def test_a_control_at_weight_zero_renders_as_none(engine: DiffusersEngine, plain: np.ndarray) -> None:
    result = engine.render(make_spec(controls=[canny(weight=0.0)]), ignore_progress)

    assert (pixels(result) == plain).all()
    assert "controls" not in result.engine_info
    assert result.engine_info["pipeline_class"] == "StableDiffusionPipeline"


def test_two_controls_render_together(engine: DiffusersEngine, plain: np.ndarray) -> None:
    depth = ControlInput(image=GRADIENT_KEY, type="depth", model=TINY_DEPTH, weight=0.8, start=0.0, end=0.5)
    alone = engine.render(make_spec(controls=[canny()]), ignore_progress)
    both = engine.render(make_spec(controls=[canny(), depth]), ignore_progress)

    assert mean_abs_diff(pixels(both), plain) > VISIBLE
    assert mean_abs_diff(pixels(both), pixels(alone)) > 0
    assert [row["model"] for row in both.engine_info["controls"]] == [TINY_CANNY, TINY_DEPTH]
    assert both.engine_info["controls"][1]["end"] == 0.5
    assert "canny_thresholds" not in both.engine_info["controls"][1]


def test_controls_leave_the_model_as_it_was(engine: DiffusersEngine, plain: np.ndarray) -> None:
    engine.render(make_spec(controls=[canny()]), ignore_progress)

    assert (pixels(engine.render(make_spec(), ignore_progress)) == plain).all()


def test_a_control_on_image_to_image(engine: DiffusersEngine) -> None:
    unguided = engine.render(make_spec(image=GRADIENT_KEY, strength=0.7), ignore_progress)
    guided = engine.render(make_spec(image=GRADIENT_KEY, strength=0.7, controls=[canny()]), ignore_progress)

    assert guided.engine_info["pipeline_class"] == "StableDiffusionControlNetImg2ImgPipeline"
    assert mean_abs_diff(pixels(guided), pixels(unguided)) > VISIBLE


def test_an_sdxl_control_steers_an_sdxl_render(engine: DiffusersEngine) -> None:
    unguided = engine.render(make_spec(model=TINY_SDXL), ignore_progress)
    guided = engine.render(
        make_spec(model=TINY_SDXL, controls=[canny(model=TINY_SDXL_CANNY)]), ignore_progress
    )

    assert guided.engine_info["pipeline_class"] == "StableDiffusionXLControlNetPipeline"
    assert mean_abs_diff(pixels(guided), pixels(unguided)) > VISIBLE


def test_a_controlnet_of_another_family_is_refused(engine: DiffusersEngine) -> None:
    with pytest.raises(ValidationFailed, match="ControlNet 'tiny-canny' is for sd15 models") as caught:
        engine.render(make_spec(model=TINY_SDXL, controls=[canny()]), ignore_progress)

    assert any("sdxl" in step for step in caught.value.remediation)


def test_an_unregistered_controlnet_says_how_to_register_one(engine: DiffusersEngine) -> None:
    with pytest.raises(ModelNotFound, match="not registered") as caught:
        engine.render(make_spec(controls=[canny(model="no-such-controlnet")]), ignore_progress)

    assert any("controlnets:" in step for step in caught.value.remediation)


def test_a_reference_image_steers_the_render_and_leaves_no_trace(
    engine: DiffusersEngine, plain: np.ndarray
) -> None:
    spec = make_spec(reference_image=GRADIENT_KEY, reference_model=TINY_IP_ADAPTER, reference_weight=0.8)

    result = engine.render(spec, ignore_progress)
    again = engine.render(spec, ignore_progress)
    after = engine.render(make_spec(), ignore_progress)

    assert mean_abs_diff(pixels(result), plain) > VISIBLE
    assert (pixels(again) == pixels(result)).all()
    assert result.engine_info["ip_adapter"] == {"model": TINY_IP_ADAPTER, "weight": 0.8}
    # The next job without a reference renders as if the adapter had never been loaded.
    assert (pixels(after) == plain).all()


def test_a_reference_at_weight_zero_renders_as_none(engine: DiffusersEngine, plain: np.ndarray) -> None:
    spec = make_spec(reference_image=GRADIENT_KEY, reference_model=TINY_IP_ADAPTER, reference_weight=0.0)

    result = engine.render(spec, ignore_progress)

    assert (pixels(result) == plain).all()
    assert "ip_adapter" not in result.engine_info


def test_an_ip_adapter_of_another_family_is_refused(engine: DiffusersEngine) -> None:
    spec = make_spec(model=TINY_SDXL, reference_image=GRADIENT_KEY, reference_model=TINY_IP_ADAPTER)

    with pytest.raises(ValidationFailed, match="IP-Adapter 'tiny-ip' is for sd15 models"):
        engine.render(spec, ignore_progress)


def test_hires_fix_renders_the_output_size_and_redraws_the_upscale(engine: DiffusersEngine) -> None:
    hires = HiresFix(scale=2.0, strength=0.6, steps=4)
    calls: list[tuple[int, int]] = []

    result = engine.render(make_spec(hires=hires), lambda step, total: calls.append((step, total)))
    upscaled = (
        engine.render(make_spec(), ignore_progress)
        .images[0]
        .image.resize((128, 128), Image.Resampling.LANCZOS)
    )

    assert result.images[0].image.size == (128, 128)
    assert mean_abs_diff(pixels(result), np.asarray(upscaled, dtype=np.int16)) > VISIBLE
    # Progress counts both passes: 3 steps at 64x64, then int(4 x 0.6) = 2 at 128x128.
    assert calls[0] == (0, 5) and calls[-1] == (5, 5)
    assert [step for step, _ in calls] == sorted({step for step, _ in calls})
    assert result.engine_info["hires"] == {
        "scale": 2.0,
        "strength": 0.6,
        "steps": 4,
        "denoise_steps": 2,
        "upscaler": "lanczos",
        "first_pass_size": [64, 64],
        "output_size": [128, 128],
        "pipeline_class": "StableDiffusionImg2ImgPipeline",
    }


def test_hires_fix_rounds_the_output_size_and_is_reproducible(engine: DiffusersEngine) -> None:
    spec = make_spec(hires=HiresFix(scale=1.3, strength=0.5))

    first, second = engine.render(spec, ignore_progress), engine.render(spec, ignore_progress)

    assert first.images[0].image.size == spec.output_size == (80, 80)
    assert (pixels(first) == pixels(second)).all()


def test_hires_fix_at_strength_zero_keeps_the_upscaled_picture(
    engine: DiffusersEngine, plain: np.ndarray
) -> None:
    result = engine.render(make_spec(hires=HiresFix(scale=2.0, strength=0.0)), ignore_progress)

    upscaled = Image.fromarray(plain.astype(np.uint8)).resize((128, 128), Image.Resampling.LANCZOS)
    assert (pixels(result) == np.asarray(upscaled, dtype=np.int16)).all()


def test_hires_fix_with_a_control_and_a_reference(engine: DiffusersEngine, plain: np.ndarray) -> None:
    spec = make_spec(
        controls=[canny()],
        reference_image=GRADIENT_KEY,
        reference_model=TINY_IP_ADAPTER,
        hires=HiresFix(scale=1.5, strength=0.5),
        num_images=2,
    )

    result = engine.render(spec, ignore_progress)

    assert [image.image.size for image in result.images] == [(96, 96), (96, 96)]
    assert result.engine_info["hires"]["pipeline_class"] == "StableDiffusionControlNetImg2ImgPipeline"
    assert result.engine_info["controls"][0]["model"] == TINY_CANNY
    assert (pixels(engine.render(make_spec(), ignore_progress)) == plain).all()


def test_hires_fix_upscales_with_a_registered_upscaler(tiny_models: Path, tmp_path: Path) -> None:  # noqa: F811
    from services.images_service.engines.upscaling import build_tiny_upscaler

    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(tiny_models.read_text())
    weights = build_tiny_upscaler(tmp_path / "tiny-x2.safetensors", 2)
    register_addon(models_yaml, "upscalers", "tiny-x2", {"path": str(weights), "scale": 2})
    engine = DiffusersEngine(ModelRegistry(models_yaml), device="cpu", image_loader=load_stored)
    try:
        by_network = engine.render(
            make_spec(hires=HiresFix(scale=2.0, strength=0.0, upscaler="tiny-x2")), ignore_progress
        )
        by_lanczos = engine.render(make_spec(hires=HiresFix(scale=2.0, strength=0.0)), ignore_progress)
    finally:
        engine.close()

    assert by_network.images[0].image.size == (128, 128)
    assert mean_abs_diff(pixels(by_network), pixels(by_lanczos)) > VISIBLE
    assert by_network.engine_info["hires"]["upscaler"] == "tiny-x2"


def test_a_lora_and_a_reference_with_a_control_then_none_of_them(
    engine: DiffusersEngine, plain: np.ndarray
) -> None:
    guided = make_spec(controls=[canny()], reference_image=GRADIENT_KEY, reference_model=TINY_IP_ADAPTER)
    with_lora = make_spec(**{**guided.model_dump(), "loras": [LoraRef(name=TINY_LORA, weight=1.0)]})

    without = engine.render(guided, ignore_progress)
    result = engine.render(with_lora, ignore_progress)

    assert mean_abs_diff(pixels(result), pixels(without)) > VISIBLE
    assert result.engine_info["loras"] == [{"name": TINY_LORA, "weight": 1.0}]
    assert (pixels(engine.render(make_spec(), ignore_progress)) == plain).all()

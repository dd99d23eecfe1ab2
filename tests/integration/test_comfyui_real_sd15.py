"""One txt2img through the ComfyUI engine's own template (CheckpointLoaderSimple → CLIPTextEncode →
KSampler → VAEDecode → SaveImage) on the real ComfyUI, with a full-size SD1.5 of random weights:
the path a user's checkpoint takes, which no checkpoint-free graph covers. ComfyUI must detect the
model as SD1.5 from its tensor shapes (a tiny UNet is not detected), so the model is full size
(2.1 GB fp16; built once and cached in KITTY_MODELS_CACHE, else var/models, like the peer's venv).
"""

from __future__ import annotations

import json

import pytest

from services.contracts import RenderSpec
from services.images_service.engines.comfyui import ComfyUIEngine
from services.images_service.metadata import read_png_text
from tests.support.fakes import Recorder
from tests.support.peers.real_comfyui import (
    BUILD_TIMEOUT_S,
    PROMPT_TIMEOUT_S,
    START_TIMEOUT_S,
    RealComfyUI,
    real_comfyui_fixture,  # noqa: F401 (the session fixture `real_comfyui`)
)
from tests.support.peers.real_sd15 import (
    checkpoint_fixture,  # noqa: F401 (the session fixture `checkpoint`)
    comfyui_settings,
    random_sd15_fixture,  # noqa: F401 (the session fixture `random_sd15`)
)

STEPS = 2
"""Sampler steps: each is seconds on two busy cores at 64×64."""

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.timeout(int(BUILD_TIMEOUT_S + START_TIMEOUT_S + 2 * PROMPT_TIMEOUT_S)),
]


def test_txt2img_through_the_template_with_a_full_size_sd15(
    real_comfyui: RealComfyUI, checkpoint: str
) -> None:
    engine = ComfyUIEngine(comfyui_settings(real_comfyui))
    spec = RenderSpec.model_validate(
        {
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "blurry",
            "model": checkpoint.removesuffix(".safetensors"),
            "width": 64,
            "height": 96,
            "steps": STEPS,
            "cfg": 6.5,
            "seed": 1234,
            "num_images": 1,
            "engine": "comfyui",
        }
    )
    progress = Recorder()
    try:
        result = engine.render(spec, progress)
    finally:
        engine.close()

    [image] = result.images
    assert image.image.size == (64, 96)
    # Random weights draw noise, never one flat colour: a NaN anywhere (a text encoder the
    # conversion lost, say) would save a black picture and still pass every check below.
    low, high = image.image.convert("L").getextrema()
    assert high - low > 16, f"a flat {low}..{high} picture: the render went wrong"
    assert image.seed == 1234
    # The sampler's own progress, step by step, from the real websocket.
    assert (STEPS, STEPS) in progress.calls
    assert [step for step, _ in progress.calls] == sorted(step for step, _ in progress.calls)
    # What ComfyUI ran is our template with the spec's values, and the PNG says so.
    graph = json.loads(image.text_chunks["prompt"])
    sampler = next(node for node in graph.values() if node["class_type"] == "KSampler")["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (1234, STEPS, 6.5)
    loader = next(node for node in graph.values() if node["class_type"] == "CheckpointLoaderSimple")
    assert loader["inputs"]["ckpt_name"] == checkpoint
    assert result.engine_info["checkpoint"] == checkpoint
    saved = sorted(real_comfyui.output_dir.rglob("*.png"), key=lambda path: path.stat().st_mtime)[-1]
    assert json.loads(read_png_text(saved.read_bytes())["prompt"]) == graph

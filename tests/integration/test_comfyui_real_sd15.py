"""One txt2img through the ComfyUI engine's own template (CheckpointLoaderSimple → CLIPTextEncode →
KSampler → VAEDecode → SaveImage) on the real ComfyUI, with a full-size SD1.5 of random weights:
the path a user's checkpoint takes, which no checkpoint-free graph covers. ComfyUI must detect the
model as SD1.5 from its tensor shapes (a tiny UNet is not detected), so the model is full size
(2.1 GB fp16; built once and cached under var/models, like the peer's venv).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers.comfyui import install_checkpoint
from services.contracts import RenderSpec
from services.images_service.engines.comfyui import ComfyUIEngine
from services.images_service.metadata import read_png_text
from services.images_service.settings import Settings
from services.images_service.tiny import build_random_sd15
from tests.support.fakes import Recorder
from tests.support.peers.real_comfyui import (
    BUILD_TIMEOUT_S,
    PROMPT_TIMEOUT_S,
    START_TIMEOUT_S,
    RealComfyUI,
    real_comfyui_fixture,  # noqa: F401 (the session fixture `real_comfyui`)
)

MODELS_CACHE = Path(__file__).resolve().parents[2] / "var" / "models"
"""Where the random SD1.5 and its converted checkpoint are kept between runs (var/ is gitignored)."""

STEPS = 2
"""Sampler steps: each is seconds on two busy cores at 64×64."""

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.timeout(int(BUILD_TIMEOUT_S + START_TIMEOUT_S + 2 * PROMPT_TIMEOUT_S)),
]


@pytest.fixture(scope="module")
def checkpoint(real_comfyui: RealComfyUI) -> Iterator[str]:
    """The random SD1.5, converted by ComfyUI itself into a checkpoint in its checkpoints folder."""
    folder = build_random_sd15(MODELS_CACHE)
    yield install_checkpoint(real_comfyui, folder, MODELS_CACHE)


def test_txt2img_through_the_template_with_a_full_size_sd15(
    real_comfyui: RealComfyUI, checkpoint: str
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        comfyui_url=real_comfyui.url,
        engine_poll_interval_s=0.1,
        job_timeout_s=PROMPT_TIMEOUT_S,
    )
    engine = ComfyUIEngine(settings)
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

"""The ComfyUI engine's guided template on the real ComfyUI, with the full-size random SD1.5 of
test_comfyui_real_sd15.py: the hires fix's second pass (ImageScale → VAEEncode → a second KSampler)
and ControlNet (LoadImage of our canny map → ControlNetLoader → ControlNetApplyAdvanced), whose
graphs the fake ComfyUI only records. The ControlNet is full size too (ComfyUI detects its family
from its shapes), random, made from the random SD1.5's UNet; built once and cached
(KITTY_MODELS_CACHE, else var/models).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.contracts import ControlInput, RenderSpec
from services.images_service.control_maps import control_map
from services.images_service.engines.base import RenderResult
from services.images_service.engines.comfyui import ComfyUIEngine
from tests.support.fakes import Recorder
from tests.support.peers.real_comfyui import (
    BUILD_TIMEOUT_S,
    PROMPT_TIMEOUT_S,
    START_TIMEOUT_S,
    RealComfyUI,
    real_comfyui_fixture,  # noqa: F401 (the session fixture `real_comfyui`)
)
from tests.support.peers.real_sd15 import (
    CONTROLNET_BUILD_TIMEOUT_S,
    checkpoint_fixture,  # noqa: F401 (the session fixture `checkpoint`)
    comfyui_settings,
    controlnet_fixture,  # noqa: F401 (the session fixture `controlnet`)
    random_sd15_fixture,  # noqa: F401 (the session fixture `random_sd15`)
)

STEPS = 2
"""Sampler steps per pass: each is seconds on two busy cores at 64×64."""

SIDE = 64
"""The first pass's width and height."""

CONTROL_KEY = "uploads/square.png"
"""The control picture's key in our store; the engine's image loader answers it."""

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    # The first test pays for the venv, the server, the checkpoint's conversion (one prompt) and the
    # ControlNet's build; each render after that is seconds.
    pytest.mark.timeout(
        int(BUILD_TIMEOUT_S + START_TIMEOUT_S + CONTROLNET_BUILD_TIMEOUT_S + 2 * PROMPT_TIMEOUT_S)
    ),
]


def white_square() -> Image.Image:
    """The control picture: a white square on black, whose canny edges are its outline."""
    picture = Image.new("RGB", (SIDE, SIDE), "black")
    ImageDraw.Draw(picture).rectangle((16, 16, 47, 47), fill="white")
    return picture


def render(
    server: RealComfyUI,
    checkpoint: str,
    image_loader: Callable[[str], Image.Image] | None = None,
    **fields: Any,
) -> tuple[RenderResult, Recorder]:
    """One template render of a 64×64 spec (plus `fields`) on `server`; the result and its progress."""
    spec = RenderSpec.model_validate(
        {
            "prompt": "a lighthouse at dusk",
            "negative_prompt": "blurry",
            "model": checkpoint.removesuffix(".safetensors"),
            "width": SIDE,
            "height": SIDE,
            "steps": STEPS,
            "cfg": 6.5,
            "seed": 4321,
            "engine": "comfyui",
            **fields,
        }
    )
    engine = ComfyUIEngine(comfyui_settings(server), image_loader=image_loader)
    progress = Recorder()
    try:
        return engine.render(spec, progress), progress
    finally:
        engine.close()


def ran_graph(result: RenderResult) -> dict[str, Any]:
    """The graph ComfyUI ran, as it wrote it into the PNG's ``prompt`` chunk."""
    [image] = result.images
    return dict(json.loads(image.text_chunks["prompt"]))


def node_ids(graph: dict[str, Any], class_type: str) -> list[str]:
    """The ids of `graph`'s nodes of `class_type`, in order."""
    return sorted((node_id for node_id, node in graph.items() if node["class_type"] == class_type), key=int)


def nodes_of(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    """The inputs of `graph`'s nodes of `class_type`, in node id order."""
    return [graph[node_id]["inputs"] for node_id in node_ids(graph, class_type)]


def test_hires_fix_renders_a_second_pass_at_the_output_size(
    real_comfyui: RealComfyUI, checkpoint: str
) -> None:
    result, progress = render(real_comfyui, checkpoint, hires={"scale": 1.5, "strength": 0.5})

    [image] = result.images
    assert image.image.size == (96, 96)  # spec.output_size: 64 × 1.5
    assert np.asarray(image.image).std() > 0  # rendered: a NaN anywhere on the way saves all black
    # Both passes' steps, from the real websocket, counted on: 1..2 the first pass, 3..4 the second.
    steps = [step for step, _ in progress.calls]
    assert set(range(1, 2 * STEPS + 1)) <= set(steps)
    assert steps == sorted(steps)
    assert progress.calls[-1] == (2 * STEPS, 2 * STEPS)
    graph = ran_graph(result)
    first, second = nodes_of(graph, "KSampler")
    assert (first["denoise"], second["denoise"]) == (1.0, 0.5)
    assert (first["steps"], second["steps"]) == (STEPS, STEPS)
    assert first["seed"] == second["seed"] == 4321
    [scale] = nodes_of(graph, "ImageScale")
    assert (scale["width"], scale["height"]) == (96, 96)
    # The second sampler starts from the first pass's pixels, resized and encoded again.
    encoded = graph[str(second["latent_image"][0])]
    assert encoded["class_type"] == "VAEEncode"
    assert graph[str(encoded["inputs"]["pixels"][0])]["class_type"] == "ImageScale"


def test_a_canny_controlnet_steers_the_render_on_the_real_server(
    real_comfyui: RealComfyUI, checkpoint: str, controlnet: str
) -> None:
    picture = white_square()
    loaded: list[str] = []

    def image_loader(key: str) -> Image.Image:
        loaded.append(key)
        return picture

    def control(weight: float) -> dict[str, Any]:
        return {
            "image": CONTROL_KEY,
            "type": "canny",
            "model": controlnet.removesuffix(".safetensors"),
            "weight": weight,
            "start": 0.0,
            "end": 0.9,
        }

    plain, _ = render(real_comfyui, checkpoint)
    steered, progress = render(real_comfyui, checkpoint, image_loader, controls=[control(1.0)])
    weightless, _ = render(real_comfyui, checkpoint, image_loader, controls=[control(0.0)])

    assert loaded == [CONTROL_KEY, CONTROL_KEY]
    assert (STEPS, STEPS) in progress.calls
    # The real server loaded our ControlNet and applied it as sent, to both prompts, before sampling.
    graph = ran_graph(steered)
    [loader] = nodes_of(graph, "ControlNetLoader")
    assert loader["control_net_name"] == controlnet
    assert steered.engine_info["controlnets"] == [controlnet]
    [apply_id] = node_ids(graph, "ControlNetApplyAdvanced")
    apply = graph[apply_id]["inputs"]
    assert (apply["strength"], apply["start_percent"], apply["end_percent"]) == (1.0, 0.0, 0.9)
    [sampler] = nodes_of(graph, "KSampler")
    assert (sampler["positive"], sampler["negative"]) == ([apply_id, 0], [apply_id, 1])
    # What LoadImage read is our canny map of the square, as uploaded into ComfyUI's input folder.
    [upload] = steered.engine_info["inputs"]["controls"]
    assert nodes_of(graph, "LoadImage") == [{"image": upload}]
    sent = np.asarray(Image.open(real_comfyui.input_dir / upload).convert("RGB"))
    expected = control_map(picture, ControlInput.model_validate(control(1.0)), (SIDE, SIDE))
    assert np.array_equal(sent, np.asarray(expected))
    assert sent.max() == 255 and sent.min() == 0  # the square's outline, not a blank map

    plain_pixels = np.asarray(plain.images[0].image, dtype=np.int16)
    steered_pixels = np.asarray(steered.images[0].image, dtype=np.int16)
    weightless_pixels = np.asarray(weightless.images[0].image, dtype=np.int16)
    assert plain_pixels.std() > 0  # a picture, not a flat field that would hide any difference
    assert np.abs(steered_pixels - plain_pixels).mean() > 1.0
    # Weight 0 renders as if the control were absent (ComfyUI skips a zero-strength apply).
    assert np.array_equal(weightless_pixels, plain_pixels)

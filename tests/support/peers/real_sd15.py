"""The full-size random SD1.5 on the real ComfyUI, shared by the tests that render with it: the
checkpoint fixture (ComfyUI's own conversion, cached under var/models), a random SD1.5 ControlNet
built from that model's UNet and installed in the peer's models/controlnet, and the engine's
settings for the peer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.peers.comfyui import MODELS_CACHE, PROMPT_TIMEOUT_S, install_checkpoint
from services.images_service.settings import Settings
from services.images_service.tiny import build_random_sd15
from tests.support.peers.real_comfyui import RealComfyUI

CONTROLNET_SEED = 0
"""Seed of the ControlNet's own weights (its hint encoder and its zero convolutions): two builds
hold identical weights."""

CONTROLNET_BUILD_TIMEOUT_S = 600.0
"""Building the ControlNet: ~1–2 min on two busy cores (the UNet loaded, its encoder copied, 0.7 GB
written)."""

__all__ = [
    "CONTROLNET_BUILD_TIMEOUT_S",
    "MODELS_CACHE",
    "build_random_controlnet",
    "checkpoint_fixture",
    "comfyui_settings",
    "controlnet_fixture",
    "install_model",
]


def comfyui_settings(server: RealComfyUI) -> Settings:
    """The service's settings for an engine that renders on `server`."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        comfyui_url=server.url,
        engine_poll_interval_s=0.1,
        job_timeout_s=PROMPT_TIMEOUT_S,
    )


def install_model(server: RealComfyUI, path: Path, folder: str) -> str:
    """`path` linked into `server`'s models/`folder` (``checkpoints``, ``controlnet``...); returns
    the name its loader node offers it by."""
    target = server.models_dir / folder / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to(path.resolve())
    return path.name


def build_random_controlnet(sd15_dir: Path, cache_dir: Path) -> Path:
    """A full-size SD1.5 ControlNet with random weights, made from `sd15_dir`'s UNet as ControlNets
    are trained from one (`ControlNetModel.from_unet`), saved as one diffusers-format fp16
    safetensors file (0.7 GB) in `cache_dir`, which ComfyUI's ControlNetLoader detects and converts.
    Kept while it is newer than the model it was made from."""
    target = cache_dir / f"{sd15_dir.name}-controlnet.safetensors"
    if target.is_file() and target.stat().st_mtime >= (sd15_dir / "model_index.json").stat().st_mtime:
        return target
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(sd15_dir, subfolder="unet", torch_dtype=torch.float16)
    torch.manual_seed(CONTROLNET_SEED)  # the hint encoder is new, not copied from the UNet
    controlnet = ControlNetModel.from_unet(unet)
    del unet
    # from_unet zero-initialises the convolutions that carry the control into the UNet (weights and
    # biases of controlnet_down_blocks, controlnet_mid_block and the hint encoder's conv_out), as
    # training starts: every residual is then exactly zero, and on the real ComfyUI such a
    # ControlNet at weight 1 renders the plain render's pixels exactly (checked once: max difference
    # 0). Training makes them non-zero; a seeded normal init at 1/sqrt(fan-in) stands in for that,
    # so each residual is about the size of the features it is made from.
    zero_convs = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    generator = torch.Generator().manual_seed(CONTROLNET_SEED)
    with torch.no_grad():
        for conv in zero_convs:
            fan_in = math.prod(conv.weight.shape[1:])
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / math.sqrt(fan_in))
    tensors = {name: tensor.half().contiguous() for name, tensor in controlnet.state_dict().items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(tensors, partial)
    partial.replace(target)  # whole or absent
    return target


@pytest.fixture(scope="session", name="random_sd15")
def random_sd15_fixture() -> Path:
    """The random SD1.5's diffusers folder (built once, cached)."""
    return build_random_sd15(MODELS_CACHE)


@pytest.fixture(scope="session", name="checkpoint")
def checkpoint_fixture(real_comfyui: RealComfyUI, random_sd15: Path) -> Iterator[str]:
    """The random SD1.5, converted by ComfyUI itself into a checkpoint in its checkpoints folder."""
    yield install_checkpoint(real_comfyui, random_sd15, MODELS_CACHE)


@pytest.fixture(scope="session", name="controlnet")
def controlnet_fixture(real_comfyui: RealComfyUI, random_sd15: Path) -> str:
    """The random SD1.5 ControlNet in the peer's models/controlnet; its ``control_net_name``."""
    started = time.monotonic()
    built = build_random_controlnet(random_sd15, MODELS_CACHE)
    print(f"random SD1.5 ControlNet ready in {time.monotonic() - started:.0f} s: {built}")
    return install_model(real_comfyui, built, "controlnet")
